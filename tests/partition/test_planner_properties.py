"""Property test: random small DAGs with skip connections, cut by the planner.

Every chosen cut is valid (each stage's inputs are model inputs or outputs of the stage
before), the chain equals the whole model, and the bytes crossing the cuts equal the
brute-force optimum among cut sets at least as balanced as the chosen one.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from graphopt.api import prepare_model
from graphopt.partition import partition
from graphopt.partition.costs import node_macs, tensor_bytes
from graphopt.partition.cuts import crossing_sets
from graphopt.partition.planner import enumerate_cuts, plan_cuts
from graphopt.partition.stages import run_chain
from graphopt.verify import generate_feeds, split_samples

_WIDTHS = (4, 16)


@st.composite
def skip_dags(draw):
    """A DAG of Relu/Add/Mul/MatMul over ("N", width) tensors; Add/Mul read any earlier tensor of their width."""
    count = draw(st.integers(3, 9))
    tensors = [("x", 4)]
    nodes, weights = [], []
    for index in range(count):
        name = f"t{index}"
        source, width = tensors[draw(st.integers(0, len(tensors) - 1))]
        kind = draw(st.sampled_from(["Relu", "Add", "Mul", "MatMul"]))
        partners = [t for t in tensors if t[1] == width]
        if kind in ("Add", "Mul"):
            other = partners[draw(st.integers(0, len(partners) - 1))][0]  # often far back: a skip connection
            nodes.append(helper.make_node(kind, [source, other], [name]))
        elif kind == "MatMul":
            out_width = draw(st.sampled_from(_WIDTHS))
            weight = f"w{index}"
            values = np.random.default_rng(index).standard_normal((width, out_width)).astype(np.float32) * 0.3
            weights.append(onnx.numpy_helper.from_array(values, weight))
            nodes.append(helper.make_node("MatMul", [source, weight], [name]))
            width = out_width
        else:
            nodes.append(helper.make_node("Relu", [source], [name]))
        tensors.append((name, width))
    outputs = [tensors[-1]]
    if draw(st.booleans()) and len(tensors) > 3:
        early = tensors[draw(st.integers(1, len(tensors) - 2))]
        outputs.insert(0, early)  # a model output made early: it must be carried to the end
    graph = helper.make_graph(
        nodes, "skip_dag",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name, width in outputs],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=skip_dags(), stages=st.integers(1, 3), cut_weight=st.sampled_from([0.0, 0.01, 50.0]))
def test_cuts_are_valid_chain_equals_whole_bytes_are_optimal(model, stages, cut_weight):
    stages = min(stages, len(model.graph.node))
    result = partition(model, stages, by="macs", cut_weight=cut_weight, input_shapes={"x": (3, 4)})
    assert len(result.stages) == stages
    available = {"x"}
    for stage in result.stages:
        onnx.checker.check_model(stage, full_check=True)
        assert {value.name for value in stage.graph.input} <= available  # every crossing tensor flows forward
        available = {value.name for value in stage.graph.output}
    assert [value.name for value in result.stages[-1].graph.output] == [value.name for value in model.graph.output]
    assert result.manifest["verification"]["bit_exact"]

    feeds = split_samples(generate_feeds(model, {"x": (5, 4)}, seed=1))
    whole = run_chain([model], feeds)
    chained = run_chain(result.stages, feeds)
    for expected, got in zip(whole, chained):
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)

    # The planner's choice against brute force, on the same costs and bytes.
    model = prepare_model(model)  # shape-inferred, as partition() sees it
    cuts = crossing_sets(model)
    names = list(dict.fromkeys([n for names in cuts.crossing for n in names] + [n for io in cuts.order for n in io.writes]))
    sizes, shapes = tensor_bytes(model, split_samples(generate_feeds(model, {"x": (3, 4)}))[0], names)
    costs = node_macs(model, shapes)
    cut_bytes = [sum(sizes[n] for n in names) for names in cuts.crossing]
    plan = plan_cuts(costs, cut_bytes, stages, cut_weight=cut_weight)
    assert list(plan.cuts) == result.manifest["plan"]["cuts"]
    best = enumerate_cuts(costs, cut_bytes, stages, max_stage_cost=max(plan.stage_costs))
    assert best is not None and sum(plan.cut_bytes) == best[0]


@settings(max_examples=200, deadline=None)
@given(costs=st.lists(st.floats(0.0, 10.0), min_size=2, max_size=10), stages=st.integers(1, 4),
       byte_steps=st.lists(st.integers(0, 8), min_size=10, max_size=10), cut_weight=st.sampled_from([0.0, 1.0, 1e4]),
       weight_sizes=st.lists(st.integers(1, 50), min_size=10, max_size=10), cap=st.one_of(st.none(), st.integers(50, 200)))
def test_plan_is_exact_for_its_balance_and_never_beaten(costs, stages, byte_steps, cut_weight, weight_sizes, cap):
    import itertools

    from graphopt.errors import InputError

    n = len(costs)
    stages = min(stages, n)
    cut_bytes = [0] + [step * 1000 for step in byte_steps[: n - 1]]
    weights = [{f"w{i}": weight_sizes[i], "shared": 10} for i in range(n)]
    try:
        plan = plan_cuts(costs, cut_bytes, stages, cut_weight=cut_weight, weights=weights, max_stage_bytes=cap)
    except InputError:
        assert enumerate_cuts(costs, cut_bytes, stages, max_stage_cost=float("inf"), weights=weights, max_stage_bytes=cap) is None
        return
    best = enumerate_cuts(costs, cut_bytes, stages, max_stage_cost=max(plan.stage_costs), weights=weights, max_stage_bytes=cap)
    assert best is not None and sum(plan.cut_bytes) == best[0]
    total = sum(costs) or 1.0
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = (0, *cuts, n)
        if cap is not None and any(sum({**{k: v for w in weights[a:b] for k, v in w.items()}}.values()) > cap
                                   for a, b in zip(bounds, bounds[1:])):
            continue
        objective = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])) / total + cut_weight * sum(cut_bytes[c] for c in cuts) / 2**20
        assert plan.objective <= objective + 1e-9
