"""graphopt/speed.py and its use by the lossy passes: a result slower than its input is not kept."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import onnx.helper as oh
import onnx.numpy_helper
from onnx import TensorProto

import graphopt
from graphopt.latency.backends import LatencyBackend
from graphopt.speed import slower


def _chain(matmuls: int, width: int = 384):
    """x → `matmuls` MatMuls by the same square weight: `matmuls` × width² × rows MACs."""
    nodes = [oh.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", "W"], [f"h{i}" if i < matmuls - 1 else "y"])
             for i in range(matmuls)]
    weight = (np.eye(width) + 1e-3 * np.random.default_rng(0).normal(size=(width, width))).astype(np.float32)
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [64, width])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [64, width])],
                          [onnx.numpy_helper.from_array(weight, "W")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def test_a_candidate_doing_far_more_work_is_slower_and_the_reverse_is_not():
    samples = {"x": np.ones((1, 64, 256), np.float32)}
    light, heavy = _chain(2, width=256), _chain(24, width=256)  # 12× the MACs
    found = slower(light, heavy, samples, floor_ms=0.0)
    assert found is not None and found["latency_ratio"] > 1.5
    assert slower(heavy, light, samples, floor_ms=0.0) is None


def test_an_input_under_the_timing_floor_is_not_judged():
    assert slower(_chain(1, width=4), _chain(3, width=4), {"x": np.ones((1, 64, 4), np.float32)}) is None


def test_factorize_backs_off_from_a_slower_result_and_leaves_the_model(monkeypatch):
    sys.path.insert(0, "tests/plugins/factorize")
    from factorize_support import single_layer

    pass_module = sys.modules.get("graphopt_plugins.factorize.factorize_pass")
    if pass_module is None:
        import graphopt_plugins.factorize.factorize_pass as pass_module
    calls = []
    monkeypatch.setattr(pass_module, "slower", lambda *args, **kwargs: calls.append(1) or {"latency_ratio": 1.2, "reference_ms": 3.0, "timings": 1})
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 8)) @ rng.normal(size=(8, 64))
    model = single_layer("MatMul", [16, 64], weight)
    result = graphopt.optimize(model, passes=["factorize"], verify="off",
                               calibration={"x": rng.normal(size=(8, 16, 64)).astype(np.float32)})
    entry = result.report["passes"][0]
    assert calls and entry["status"] == "unchanged"
    assert entry["details"]["slower_than_input"][0]["latency_ratio"] == 1.2


class _Board(LatencyBackend):
    """A fake target: the first model runs 2 ms, a copy of it (2 + 2·`noise`) ms, any other `ratio` times 2 ms."""

    name = "fake-board"

    def __init__(self, ratio: float, noise: float = 0.0):
        super().__init__()
        self.ratio, self.noise = ratio, noise

    def _medians(self, models, feeds, seconds, rounds, decided=None):
        return [2.0] + [2.0 * (1 + self.noise) if model is models[0] else 2.0 * self.ratio for model in models[1:]]


def test_a_lossy_result_one_percent_slower_is_slower_however_small_and_a_faster_one_is_not():
    samples = {"x": np.ones((1, 64, 8), np.float32)}
    board = _Board(1.01)
    found = slower(_chain(1, width=8), _chain(2, width=8), samples, backend=board)
    assert found == {"latency_ratio": 1.01, "noise": 0.0, "reference_ms": 2.0, "timings": 3}  # near 1.0: three more
    assert board.comparisons["lossy pass: never slower"] == 4
    assert slower(_chain(1, width=8), _chain(2, width=8), samples, backend=_Board(1.0)) is None  # no noise: equal is kept
    # 2% faster, but the input differs from its own copy by 3%: not measurably faster
    assert slower(_chain(1, width=8), _chain(2, width=8), samples, backend=_Board(0.98, noise=0.03))["noise"] == 0.03
    assert slower(_chain(1, width=8), _chain(2, width=8), samples, backend=_Board(0.98, noise=0.01)) is None
    far = _Board(1.2)
    assert slower(_chain(1, width=8), _chain(2, width=8), samples, backend=far)["timings"] == 1  # settled at once
    assert far.comparisons["lossy pass: never slower"] == 1


class _BoardPlugin:
    """A device on which any model with other weights than `reference` runs `ratio` times its time."""

    def __init__(self, reference, ratio: float):
        self.weights, self.ratio = _weight_count(reference), ratio

    @graphopt.hookimpl
    def graphopt_latency_backends(self):
        return ["fake-board"]

    @graphopt.hookimpl
    def graphopt_measure_latency(self, model_path, inputs, settings):
        same = _weight_count(onnx.load(model_path)) == self.weights
        return {"median_ms": 2.0 if same else 2.0 * self.ratio}


def _weight_count(model) -> int:
    return sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer)


@pytest.mark.parametrize("ratio, kept", [(1.01, False), (0.95, True)])
def test_factorize_keeps_a_result_on_the_board_only_when_it_is_faster(ratio, kept):
    sys.path.insert(0, "tests/plugins/factorize")
    from factorize_support import single_layer

    rng = np.random.default_rng(0)
    model = single_layer("MatMul", [16, 64], rng.normal(size=(64, 8)) @ rng.normal(size=(8, 64)))
    data = lambda seed: {"x": np.random.default_rng(seed).normal(size=(8, 16, 64)).astype(np.float32)}  # noqa: E731
    result = graphopt.optimize(model, passes=["factorize"], calibration=data(1), inputs=data(2),
                               latency_on="fake-board", plugins=[_BoardPlugin(model, ratio)])
    entry = result.report["passes"][0]
    assert entry["status"] == ("accepted" if kept else "unchanged"), entry
    if not kept:  # 1% over the input, inside the old 2% allowance: not kept
        assert entry["details"]["slower_than_input"][0]["latency_ratio"] == 1.01
    assert (_weight_count(result.model) < _weight_count(model)) == kept
