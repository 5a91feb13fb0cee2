"""graphopt_plugins/quantize/smoothing.py: SmoothQuant migration on an encoder with LayerNorm outlier channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch_models
import trait_models
from quantize_support import quantize, run

from graphopt.verify.metrics import output_metrics


def _tokens(seed: int, samples: int) -> dict[str, np.ndarray]:
    feeds = [torch_models.transformer_feeds(1, 32, 100, seed=seed + s) for s in range(samples)]
    return {name: np.stack([f[name] for f in feeds]) for name in ("ids", "mask")}


def _worst_cosine(model, quantized, samples) -> float:
    cosines = []
    for i in range(len(samples["ids"])):
        feed = {name: values[i] for name, values in samples.items()}
        cosines.append(output_metrics(run(model, feed)[0], run(quantized, feed, optimize=True)[0])["cosine"])
    return min(cosines)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_smoothing_lowers_the_error_on_outlier_channels(mode):
    model = trait_models.encoder_with_outliers()
    calibration, evaluation = _tokens(100, 8), _tokens(300, 4)
    plain, plain_stats, _ = quantize(model, calibration, mode=mode, smooth=0.0, latency="off", auto=False)
    smoothed, stats, _ = quantize(model, calibration, mode=mode, smooth=0.5, latency="off", auto=False)
    assert stats["smoothed_tensors"] >= 3 and "smoothed_tensors" not in plain_stats
    before, after = _worst_cosine(model, plain, evaluation), _worst_cosine(model, smoothed, evaluation)
    assert after > before, (before, after)  # 1 - cos, the error, is lower


def _layernorm_matmul(outlier: float = 60.0):
    """x -> LayerNorm (γ: 2 of 64 channels ×outlier) -> MatMul whose rows for those channels are ÷outlier.

    As in trained transformers, the outlier channels carry no more signal than the others into the
    output, but with one activation scale per tensor they leave the ordinary channels ~4 levels.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    gamma = np.ones(64, np.float32)
    gamma[[5, 40]] = outlier
    weight = (rng.standard_normal((64, 64)) * 0.1).astype(np.float32)
    weight[[5, 40]] /= outlier
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1, name="norm"),
         helper.make_node("MatMul", ["n", "w"], ["y"], name="proj")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(64, np.float32), "beta"),
         numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_smoothing_rescues_the_ordinary_channels(mode):
    model = _layernorm_matmul()
    rng = np.random.default_rng(1)
    calibration = {"x": rng.standard_normal((8, 8, 64)).astype(np.float32)}
    feed = {"x": rng.standard_normal((8, 64)).astype(np.float32)}
    errors = {}
    for alpha in (0.0, 0.5):
        quantized, stats, _ = quantize(model, calibration, mode=mode, smooth=alpha, latency="off", auto=False)
        errors[alpha] = output_metrics(run(model, feed)[0], run(quantized, feed, optimize=True)[0])["sqnr_db"]
    # the LayerNorm's only reader is the MatMul: the division is folded into γ, no Mul is added
    assert not any(node.name.endswith("_smooth") for node in quantized.graph.node)
    assert any(t.name.endswith("_smoothed") for t in quantized.graph.initializer)
    assert errors[0.5] > errors[0.0] + 6, errors  # at least 4x less noise power


def test_smooth_out_of_range_is_a_usage_error():
    import graphopt

    with pytest.raises(graphopt.UsageError, match="smooth"):
        quantize(trait_models.encoder_with_outliers(), _tokens(100, 2), smooth=1.5)


def test_unknown_calibration_method_is_a_usage_error():
    import graphopt

    with pytest.raises(graphopt.UsageError, match="calibrate"):
        quantize(trait_models.encoder_with_outliers(), _tokens(100, 2), calibrate="median")
