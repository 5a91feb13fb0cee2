"""With only `--calibration` data, ranges are fitted without the last quarter of the samples and
plans are judged on all of them: a plan is held to inputs it did not fit."""

import numpy as np
import onnx
from quantize_support import calibration_for, single_op_model

import graphopt
from graphopt_plugins.quantize.numerics import activation_params


def _input_scale(model: onnx.ModelProto) -> float:
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scale = next(t for t in model.graph.initializer if t.name == node.input[1])
    return float(onnx.numpy_helper.to_array(scale))


def _quantized(samples, **kwargs):
    result = graphopt.optimize(single_op_model("MatMul"), passes=["quantize"], calibration=samples,
                               options={"quantize": {"latency": "off", "mode": "static"}}, **kwargs)
    entry = result.report["passes"][0]
    assert entry["status"] == "accepted", entry
    return result.model, entry["details"]


def test_ranges_are_fitted_without_the_held_out_quarter():
    samples = calibration_for(single_op_model("MatMul"), samples=8)
    samples["x"][6:] *= 1.05  # the held-out two are louder: a range fitted on them would be wider
    model, stats = _quantized(samples)
    assert stats["held_out_samples"] == 2
    fitted = samples["x"][:6]
    expected, _ = activation_params(float(fitted.min()), float(fitted.max()), False)
    assert np.isclose(_input_scale(model), float(expected), rtol=1e-6)
    assert stats["cosine"] >= 0.99  # judged on every sample, the two it did not fit included


def test_separate_inputs_are_judged_on_and_every_calibration_sample_is_fitted():
    samples = calibration_for(single_op_model("MatMul"), samples=8)
    samples["x"][6:] *= 1.2
    model, stats = _quantized(samples, inputs=calibration_for(single_op_model("MatMul"), samples=4, seed=5))
    assert stats["held_out_samples"] == 0
    expected, _ = activation_params(float(samples["x"].min()), float(samples["x"].max()), False)
    assert np.isclose(_input_scale(model), float(expected), rtol=1e-6)
