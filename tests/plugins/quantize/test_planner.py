"""graphopt_plugins/quantize/planner.py (+ accuracy.py, latency.py): which layers stay float, and why."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from quantize_support import calibration_for, op_counts, quantize, quantize_and_check, run

from graphopt.verify.metrics import output_metrics


def _conv_chain(layers: int = 4, seed: int = 0, outlier_layer: int | None = None) -> onnx.ModelProto:
    """x -> (Conv 3x3 -> Relu) x layers -> y; `outlier_layer` has one huge weight, hard to quantize."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for index in range(layers):
        weight = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.15
        if index == outlier_layer:
            weight[:, :, 1, 1] *= 0.01
            weight[:, 0, 1, 1] = 40.0  # one input channel dominates: its range crushes the rest
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        out = "y" if index == layers - 1 else f"a{index}"
        nodes.append(helper.make_node("Conv", [current, f"w{index}"], [f"c{index}"], name=f"block{index}/conv", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{index}"], [out], name=f"block{index}/relu"))
        current = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    onnx.checker.check_model(model, full_check=True)
    return model


def _quantized_convs(model: onnx.ModelProto) -> set[str]:
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dequantized}


def test_include_and_exclude_by_glob_and_op_type():
    model = _conv_chain()
    quantized, stats = quantize_and_check(model, exclude=["block1/*"])
    assert _quantized_convs(quantized) == {"block0/conv", "block2/conv", "block3/conv"}
    assert {"node": "block1/conv", "op": "Conv", "reason": "excluded"} in stats["skipped"]
    quantized, _ = quantize_and_check(model, include=["block[23]/*"])
    assert _quantized_convs(quantized) == {"block2/conv", "block3/conv"}
    _, stats, entry = quantize(model, calibration_for(model), exclude=["Conv"], latency="off")
    assert entry["status"] == "unchanged" and stats["quantized"] == 0


def test_budget_keeps_the_most_harmful_layer_float_and_is_met():
    model = _conv_chain(outlier_layer=2)
    calibration = calibration_for(model, samples=8)
    _, loose, _ = quantize(model, calibration, latency="off", budget="cos:0.5")
    assert loose["quantized"] == 4 and loose["kept_float"] == 0
    strict_sqnr = loose["sqnr_db"] + 4.0  # unreachable with every layer quantized
    quantized, stats = quantize_and_check(model, calibration, budget=f"sqnr:{strict_sqnr}", cosine=0.99)
    rows = stats["layers"]
    assert all(r["sensitivity_sqnr_db"] is not None for r in rows)
    kept = [r for r in rows if r["decision"] == "float"]
    done = [r for r in rows if r["decision"] == "quantized"]
    assert kept and done and all("too harmful" in r["why"] for r in kept)
    # The most harmful layers (lowest SQNR when quantized alone) are the ones kept float.
    assert max(r["sensitivity_sqnr_db"] for r in kept) <= min(r["sensitivity_sqnr_db"] for r in done)
    assert _quantized_convs(quantized) == {r["node"] for r in done}
    assert stats["sqnr_db"] >= strict_sqnr
    feeds = {"x": calibration["x"][0]}
    assert output_metrics(run(model, feeds)[0], run(quantized, feeds, optimize=True)[0])["sqnr_db"] > loose["sqnr_db"]


def test_global_budget_applies_when_the_pass_has_none():
    model = _conv_chain(outlier_layer=2)
    calibration = calibration_for(model, samples=8)
    _, loose, _ = quantize(model, calibration, latency="off", budget="cos:0.5")
    import graphopt
    result = graphopt.optimize(model, passes=["quantize"], options={"quantize": {"latency": "off"}}, calibration=calibration,
                               budget=f"sqnr={loose['sqnr_db'] + 6.0}", verify="off")
    assert result.report["passes"][0]["details"]["kept_float"] >= 1


def test_latency_decisions_are_measured_and_consistent():
    model = _conv_chain(layers=3)
    quantized, stats, entry = quantize(model, calibration_for(model), latency="auto", latency_margin=0.95)
    for row in stats["layers"]:
        assert row["float_ms"] > 0 and row["int8_ms"] > 0, row
        if row["decision"] == "quantized":
            assert row["int8_ms"] <= 0.95 * row["float_ms"]
    assert stats["quantized"] == sum(r["decision"] == "quantized" for r in stats["layers"])
    if stats["quantized"]:
        assert stats["latency"]["quantized_ms"] <= stats["latency"]["float_ms"]
    else:  # truthful: no int8 compute; at most the kept-float weights stored int8 (stored_weights.py)
        assert all(r["decision"] == "float" for r in stats["layers"])
        assert "QuantizeLinear" not in op_counts(quantized)
        if not entry["changed"]:
            assert quantized.SerializeToString() == model.SerializeToString()


def test_pipeline_verification_holds_the_pass_to_its_budget():
    model = _conv_chain()
    _, stats, entry = quantize(model, calibration_for(model), verify="each", latency="off")
    assert entry["status"] == "accepted" and entry["verification"]["ok"]
    assert op_counts(model)["Relu"] == 4


def test_a_plan_the_latency_guard_changed_is_held_to_the_budget_again(monkeypatch):
    # Whatever the latency guard leaves (here: every layer, the harmful one back in), the plan
    # that leaves the planner meets the budget: its most harmful layers go float again.
    from graphopt_plugins.quantize.planner import Planner

    model = _conv_chain(outlier_layer=2)
    calibration = calibration_for(model, samples=8)
    _, loose, _ = quantize(model, calibration, latency="off", budget="cos:0.5")
    budget = f"sqnr:{loose['sqnr_db'] + 4.0}"
    every_layer = lambda self, chosen: ([t.index for t in self.targets], {"float_ms": 1.0, "quantized_ms": 0.5})  # noqa: E731
    monkeypatch.setattr(Planner, "_guard", every_layer)
    quantized, stats = quantize_and_check(model, calibration, budget=budget, latency="auto", cosine=0.99)
    assert stats["sqnr_db"] >= loose["sqnr_db"] + 4.0
    assert "block2/conv" not in _quantized_convs(quantized)
    assert any("latency guard" in (r.get("why") or "") for r in stats["layers"])
