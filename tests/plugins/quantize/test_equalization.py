"""graphopt_plugins/quantize/equalization.py: cross-layer equalization of Conv -> (Relu) -> Conv pairs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from quantize_support import quantize, quantize_and_check, run

from graphopt import convert
from graphopt.verify.metrics import output_metrics
from graphopt_plugins.quantize.equalization import equalization_pairs, equalized_model, middle_ranges


def _separable_block(activation: str = "Relu", seed: int = 0) -> onnx.ModelProto:
    """pointwise Conv -> act -> depthwise 3x3 Conv -> act -> pointwise Conv, as in MobileNet exports.

    The depthwise weights' per-channel ranges span 100x (BatchNorm folded in) and the pointwise
    Conv after it reads the small channels with large weights: every channel carries signal,
    but one weight scale for the depthwise tensor leaves its small channels a level or two.
    """
    rng = np.random.default_rng(seed)
    spread = np.logspace(-1, 1, 16).astype(np.float32)  # 0.1 .. 10
    rng.shuffle(spread)
    pw1 = (rng.standard_normal((16, 8, 1, 1)) * 0.3).astype(np.float32)
    dw = (rng.standard_normal((16, 1, 3, 3)) * 0.3 * spread[:, None, None, None]).astype(np.float32)
    pw2 = (rng.standard_normal((8, 16, 1, 1)) * 0.3 / spread[None, :, None, None]).astype(np.float32)
    inits = [numpy_helper.from_array(pw1, "pw1"), numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array(dw, "dw"), numpy_helper.from_array((rng.standard_normal(16) * 0.1 * spread).astype(np.float32), "b2"),
             numpy_helper.from_array(pw2, "pw2"), numpy_helper.from_array(np.zeros(8, np.float32), "b3")]
    nodes = [helper.make_node("Conv", ["x", "pw1", "b1"], ["h1"], name="pw1"),
             helper.make_node(activation, ["h1"], ["a1"], name="act1"),
             helper.make_node("Conv", ["a1", "dw", "b2"], ["h2"], group=16, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node(activation, ["h2"], ["a2"], name="act2"),
             helper.make_node("Conv", ["a2", "pw2", "b3"], ["y"], name="pw2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _samples(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, 1, 8, 16, 16)).astype(np.float32)}


def _worst_cosine(model, quantized, samples) -> float:
    return min(output_metrics(run(model, {"x": x})[0], run(quantized, {"x": x}, optimize=True)[0])["cosine"] for x in samples["x"])


@pytest.mark.parametrize("data_aware", [False, True])
def test_equalized_float_model_computes_the_same(data_aware):
    model = _separable_block()
    middle = middle_ranges(model, _samples(4, 1)) if data_aware else None
    assert middle is None or sorted(middle) == ["a1", "a2"]
    equalized, pairs = equalized_model(model, middle)
    assert pairs == 2  # pw1 -> dw, dw -> pw2
    weights = {t.name: numpy_helper.to_array(t) for t in equalized.graph.initializer}
    dw = next(v for k, v in weights.items() if k.startswith("dw_equalized"))
    ranges = np.abs(dw).reshape(16, -1).max(axis=1)
    if not data_aware:
        assert ranges.max() / ranges.min() < 10  # was ~100 before
    else:
        after = middle_ranges(equalized, _samples(4, 1))["a2"]
        assert after.max() / after.min() < 0.5 * middle["a2"].max() / middle["a2"].min()  # the depthwise output evened out
    for x in _samples(3, 5)["x"]:
        np.testing.assert_allclose(run(equalized, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["HardSwish", "Sigmoid"])
def test_no_pair_through_an_activation_that_is_not_positive_homogeneous(activation):
    graph = convert.import_graph(_separable_block(activation))
    assert equalization_pairs(graph) == []


def test_no_pair_through_relu6_clip():
    model = _separable_block()
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Clip"
            node.input.extend(["", "six"])
    model.graph.initializer.append(numpy_helper.from_array(np.array(6.0, np.float32), "six"))
    assert equalization_pairs(convert.import_graph(model)) == []
    assert equalized_model(model) == (model, 0)


def test_equalization_lowers_the_int8_error_per_tensor_and_does_not_hurt_per_channel():
    model = _separable_block()
    calibration, evaluation = _samples(8, 1), _samples(6, 2)
    error = {}
    for granularity in ("per-tensor", "per-channel"):
        for equalize in (False, True):
            quantized, stats, _ = quantize(model, calibration, mode="static", weight_granularity=granularity, equalize=equalize,
                                           latency="off", auto=False)
            assert stats["quantized"] == 3
            assert stats.get("equalized_pairs") == (2 if equalize else None)
            error[granularity, equalize] = 1 - _worst_cosine(model, quantized, evaluation)
    assert error["per-tensor", True] < 0.25 * error["per-tensor", False], error
    assert error["per-channel", True] <= 1.1 * error["per-channel", False], error


def test_equalized_model_keeps_the_pass_contract():
    model = _separable_block()
    _, stats = quantize_and_check(model, _samples(8, 1), equalize=True, mode="static",
                                  feeds={"x": _samples(1, 9)["x"][0]})
    assert stats["equalized_pairs"] == 2
