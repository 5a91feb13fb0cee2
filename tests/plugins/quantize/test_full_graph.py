"""graphopt_plugins/quantize/regions.py: full-graph int8 on a YOLO-style detector, judged per head slice."""

from __future__ import annotations

import numpy as np
import pytest
import trait_models
from quantize_support import ort_optimized_ops, quantize, run

from graphopt.verify.metrics import output_metrics

SAMPLES = 6


def _images(seed: int, samples: int = SAMPLES, size: int = 64) -> dict[str, np.ndarray]:
    # The dynamic-batch input is (batch, 3, H, W), so N samples stack to (N, 1, 3, H, W).
    return {"images": np.stack([trait_models.yolo_feeds(1, size, seed + s)["images"] for s in range(samples)])}


def _worst_slice_cosines(model, quantized, samples: dict[str, np.ndarray]) -> tuple[float, float]:
    """Worst-sample cosine of the box rows (0-3, pixels) and of the class-score rows (4:)."""
    boxes, scores = [], []
    for image in samples["images"]:
        expected = run(model, {"images": image})[0]
        actual = run(quantized, {"images": image}, optimize=True)[0]
        boxes.append(output_metrics(expected[:, :4], actual[:, :4])["cosine"])
        scores.append(output_metrics(expected[:, 4:], actual[:, 4:])["cosine"])
    return min(boxes), min(scores)


@pytest.fixture(scope="module")
def detector():
    model = trait_models.yolo_like()
    quantized, stats, entry = quantize(model, _images(100), latency="off")
    assert entry["status"] == "accepted", entry
    return model, quantized, stats


def test_detector_runs_int8_end_to_end(detector):
    _, quantized, stats = detector
    ops = ort_optimized_ops(quantized)
    # SiLU = QLinearSigmoid + QLinearMul, residual QLinearAdd, C2f/SPPF QLinearConcat: no float Sigmoid/Mul left
    # between convolutions; MaxPool and Resize run on the 8-bit tensor.
    assert ops["QLinearConv"] == stats["quantized"] and ops["QLinearSigmoid"] >= 20 and ops["QLinearMul"] >= 20, ops
    assert ops["QLinearAdd"] >= 4 and ops["QLinearConcat"] >= 5, ops
    assert ops["Sigmoid"] == 0 and ops["QuickGelu"] == 0, ops
    assert ops["NhwcMaxPool"] + ops["MaxPool"] == 3, ops
    # One quantization at the input; dequantization only where the head's float decoding reads (2 levels x
    # boxes, scores and the shapes their Reshapes read).
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] <= 12, ops
    assert stats["int8_activation_ops"] >= 50


def test_detector_head_slices_keep_their_accuracy(detector):
    model, quantized, _ = detector
    boxes, scores = _worst_slice_cosines(model, quantized, _images(200))
    assert boxes >= 0.99 and scores >= 0.99, (boxes, scores)


def test_concat_of_scores_with_pixels_keeps_the_scores_scale():
    """A Concat whose inputs differ by far more than 8x in range: the small one keeps its own scale."""
    from graphopt_plugins.quantize.regions import Region, shared_ranges

    region = Region([], ["boxes", "scores", "out"], [], [(("boxes", "scores"), "out")])
    ranges = {"boxes": (0.0, 640.0), "scores": (0.0, 1.0), "out": (0.0, 640.0)}
    merged = shared_ranges(ranges, region)
    assert merged["scores"] == (0.0, 1.0) and merged["boxes"] == merged["out"] == (0.0, 640.0)
    close = shared_ranges({"a": (-1.0, 4.0), "b": (-0.5, 6.0), "out": (-1.0, 6.0)}, Region([], [], [], [(("a", "b"), "out")]))
    assert close["a"] == close["b"] == close["out"] == (-1.0, 6.0)


def test_full_graph_off_leaves_activation_ops_float():
    model = trait_models.yolo_like()
    quantized, stats, _ = quantize(model, _images(100, samples=2), latency="off", full_graph=False, auto=False)
    assert stats["int8_activation_ops"] == 0
    ops = ort_optimized_ops(quantized)
    assert ops["QLinearConv"] == stats["quantized"] and ops["QLinearSigmoid"] == 0 and ops["QuantizeLinear"] >= 10, ops


def test_auto_mode_times_static_against_dynamic_and_reports_it():
    """On a MatMul model both modes apply: each is planned, timed against float, the faster kept."""
    import torch_models

    model = torch_models.transformer("torchscript", 17)
    feeds = [torch_models.transformer_feeds(seed=100 + s) for s in range(4)]
    calibration = {name: np.stack([f[name] for f in feeds]) for name in ("ids", "mask")}
    quantized, stats, entry = quantize(model, calibration, sensitivity_samples=2)
    assert stats["mode_requested"] == "auto"
    trials = {row["mode"]: row for row in stats["mode_trials"]}
    assert set(trials) == {"static", "dynamic"}, stats["mode_trials"]
    kept = [row for row in trials.values() if row["quantized"]]
    assert all("why" in row or row["stored_int8"] for row in trials.values() if not row["quantized"]), stats["mode_trials"]
    if not kept:  # this tiny model runs faster in float in both modes: at most its weights are stored int8
        assert stats["quantized"] == 0 and (entry["status"] == "accepted") == bool(stats["stored_int8"]), entry
        return
    if len(kept) == 2:  # both paid: timed together against float, the faster one kept
        assert stats["mode"] == min(kept, key=lambda row: row["ms"])["mode"] and all(row["float_ms"] > 0 for row in kept)
    ops = ort_optimized_ops(quantized)
    assert (ops["QLinearMatMul"] if stats["mode"] == "static" else ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"]) > 0, ops


def test_auto_mode_without_timing_picks_by_model_kind():
    import torch_models

    _, stats, _ = quantize(trait_models.yolo_like(), _images(100, samples=2), latency="off", auto=False)
    assert stats["mode"] == "static" and stats["mode_requested"] == "auto"
    model = torch_models.transformer("torchscript", 17)
    calibration = {name: value[None] for name, value in torch_models.transformer_feeds(seed=3).items()}
    _, stats, _ = quantize(model, calibration, latency="off", auto=False)
    assert stats["mode"] == "dynamic"
