"""graphopt_plugins/quantize/weight_rounding.py: weights rounded up or down to fit the layer's output."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest
from quantize_support import quantize, quantize_and_check, run, single_op_model

from graphopt.verify.metrics import output_metrics
from graphopt_plugins.quantize.weight_rounding import rounding_fit


def _correlated(rng, rows: int, channels: int) -> np.ndarray:
    """Inputs whose channels move together: one large shared component, a little of their own."""
    shared = rng.standard_normal((rows, 1)) * 3.0 + 2.0
    return (shared * (1 + 0.1 * rng.standard_normal((1, channels))) + 0.3 * rng.standard_normal((rows, channels))).astype(np.float32)


def test_adaptive_rounding_lowers_the_output_error_of_a_layer():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((32, 16)) * 0.1).astype(np.float32)  # 32 output rows, K = 16
    weight[:, 0] = 1.0  # one large weight per row sets a coarse scale
    fit, held_out = _correlated(rng, 2000, 16), _correlated(rng, 2000, 16)
    scale = (np.abs(weight).max(axis=1) / 127)[None]
    nearest = np.clip(np.rint(weight / scale[0][:, None]), -127, 127)
    levels = rounding_fit(weight[None], scale, (fit.T.astype(np.float64) @ fit)[None], 127)[0]
    assert np.all(np.abs(levels - weight / scale[0][:, None]) < 1.0)  # still one of the two neighbouring levels
    assert np.all(np.abs(levels) <= 127)
    error = {name: float(np.mean((held_out @ (weight - q * scale[0][:, None]).T) ** 2)) for name, q in
             (("nearest", nearest), ("adaptive", levels))}
    assert error["adaptive"] < 0.3 * error["nearest"], error


def _few_channel_conv() -> onnx.ModelProto:
    """A 3x3 Conv over 4 input channels, one large weight per output channel (a coarse weight scale)."""
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((16, 4, 3, 3)) * 0.05).astype(np.float32)
    weight[:, 0, 1, 1] = 4.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(16, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _images(count: int, seed: int) -> dict[str, np.ndarray]:
    """Images whose pixels and channels move together (one large level per image, a little texture)."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(1.0, 4.0, (count, 1, 1, 1, 1))
    gain = 1 + 0.1 * rng.standard_normal((1, 1, 4, 1, 1))
    return {"x": (level * gain + 0.3 * rng.standard_normal((count, 1, 4, 12, 12))).astype(np.float32)}


def test_adaptive_rounding_lowers_the_error_of_the_quantized_model():
    model = _few_channel_conv()
    calibration, evaluation = _images(8, 1), _images(4, 2)
    sqnr = {}
    for rounding in ("nearest", "adaptive"):
        quantized, stats, _ = quantize(model, calibration, mode="static", rounding=rounding, reduce_range="on", latency="off", auto=False)
        assert stats["quantized"] == 1
        sqnr[rounding] = min(output_metrics(run(model, {"x": x})[0], run(quantized, {"x": x}, optimize=True)[0])["sqnr_db"]
                             for x in evaluation["x"])
    assert stats["adaptive_rounded"] == 1 and stats["rounding_seconds"] < 10
    assert sqnr["adaptive"] > sqnr["nearest"] + 3, sqnr  # half the noise power at least


@pytest.mark.parametrize("op, mode", [("MatMul", "dynamic"), ("Gemm", "static"), ("Conv", "static")])
def test_adaptive_rounding_keeps_the_pass_contract(op, mode):
    quantized, stats = quantize_and_check(single_op_model(op, relu=op == "Conv"), mode=mode, rounding="adaptive",
                                          weight_granularity="per-tensor")
    assert stats["adaptive_rounded"] == 1 and stats["per_tensor_weights"] == 1
