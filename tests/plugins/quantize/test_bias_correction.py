"""graphopt_plugins/quantize/bias_correction.py: the mean output error per channel moved into the bias."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from quantize_support import quantize, run


def _coarse_conv():
    """A conv whose weights round coarsely (one large weight per output channel sets the scale) and
    whose inputs are all positive (as after a ReLU): the rounding error has a systematic part."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((8, 16, 3, 3)) * 0.02 + 0.006).astype(np.float32)
    weight[:, 0, 1, 1] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bias_correction_removes_the_mean_error_per_channel():
    model = _coarse_conv()
    rng = np.random.default_rng(1)
    calibration = {"x": rng.random((16, 1, 16, 12, 12), dtype=np.float32)}
    feed = {"x": rng.random((1, 16, 12, 12), dtype=np.float32)}
    expected = run(model, feed)[0]
    mean_error = {}
    for corrected in (False, True):
        quantized, stats, _ = quantize(model, calibration, mode="static", reduce_range="on", bias_correction=corrected,
                                       latency="off", auto=False)
        error = run(quantized, feed, optimize=True)[0] - expected
        mean_error[corrected] = float(np.abs(error.mean(axis=(0, 2, 3))).mean())
    assert stats["bias_corrected"] == 1
    assert mean_error[True] < 0.5 * mean_error[False], mean_error
