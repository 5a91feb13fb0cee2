"""graphopt_plugins/quantize/stored_weights.py: kept-float layers whose weights are stored int8 anyway."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from quantize_support import calibration_for, ort_optimized_ops, quantize, quantize_and_check, run, single_op_model
from test_planner import _conv_chain

from graphopt.verify.metrics import output_metrics
from graphopt_plugins.quantize import stored_weights
from graphopt_plugins.quantize.planner import Planner


def _spiky_calibration(model: onnx.ModelProto, samples: int = 8) -> dict[str, np.ndarray]:
    """Calibration whose first sample has a 1000x spike on input channel 0: an 8-bit activation
    range fitted to it crushes every other sample (int8 compute too harmful), while the weights,
    untouched, quantize well per output channel."""
    calibration = calibration_for(model, samples=samples)
    inputs = calibration[next(iter(calibration))]  # (samples, *input shape)
    if inputs.ndim == 5:
        inputs[0, :, 0] *= 1000.0
    else:
        inputs[0, ..., 0] *= 1000.0
    return calibration


def _float_matrices(model: onnx.ModelProto) -> list[str]:
    """Float initializers that are weights (not per-channel scales, which have a dimension of 1)."""
    return [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2 and min(t.dims) > 1]


def test_a_conv_too_harmful_for_int8_compute_keeps_its_weight_in_int8_folded_at_load():
    model = _conv_chain(layers=3)
    calibration = _spiky_calibration(model)
    feeds = {"x": calibration["x"][1]}
    quantized, stats = quantize_and_check(model, calibration, feeds=feeds, budget="cos=0.999", cosine=0.99)
    first = next(row for row in stats["layers"] if row["node"] == "block0/conv")
    assert first["decision"] == "int8 weights" and "too harmful" in first["why"] and "folded" in first["why"], first
    assert stats["stored_int8"] >= 1 and stats["stored_weights"]["form"] == "folded"
    assert not _float_matrices(quantized)  # every 3x3 weight is int8 on disk
    assert quantized.ByteSize() < 0.45 * model.ByteSize()
    # onnxruntime folds Cast -> Mul back into a float weight when the session loads: nothing of it runs.
    ops = ort_optimized_ops(quantized)
    assert ops["Cast"] == 0 and ops["Mul"] == 0, ops
    for optimize in (False, True):
        assert output_metrics(run(model, feeds)[0], run(quantized, feeds, optimize)[0])["cosine"] >= 0.999


def test_a_kept_float_matmul_reads_its_int8_weight_through_matmulnbits():
    model = single_op_model("MatMul", channels=256)
    calibration = _spiky_calibration(model)
    quantized, stats = quantize_and_check(model, calibration, feeds={"x": calibration["x"][1]}, budget="cos=0.999", cosine=0.999,
                                          mode="static")  # dynamic quantizes per call: no spike would matter
    assert stats["quantized"] == 0 and stats["stored_int8"] == 1 and stats["stored_weights"]["form"] == "fused"
    assert ort_optimized_ops(quantized)["MatMulNBits"] == 1
    assert quantized.ByteSize() < 0.3 * model.ByteSize()


def test_a_budget_int8_weights_would_break_keeps_the_layer_float():
    model = _conv_chain(layers=3, outlier_layer=1)  # one huge weight per channel: int8 zeroes the rest
    calibration = calibration_for(model)
    _, loose, _ = quantize(model, calibration, latency="off", budget="cos:0.5")
    quantized, stats = quantize_and_check(model, calibration, budget=f"sqnr:{loose['sqnr_db'] + 4.0}", cosine=0.99)
    outlier = next(row for row in stats["layers"] if row["node"] == "block1/conv")
    assert outlier["decision"] == "float", outlier
    assert "w1" in _float_matrices(quantized)
    assert stats["stored_weights"]["trials"][0]["ok"] is False


def test_stored_weights_slower_on_the_latency_backend_are_not_kept(monkeypatch):
    original = Planner._medians

    def timed(self, float_model, int8_model, float_feed, int8_feed, purpose, **kwargs):
        if purpose == "quantize: stored weights":
            return 1.0, 1.5
        if purpose == "quantize: layer":  # int8 compute slower everywhere: every layer kept float
            return 1.0, 2.0
        return original(self, float_model, int8_model, float_feed, int8_feed, purpose, **kwargs)

    monkeypatch.setattr(Planner, "_medians", timed)
    monkeypatch.setattr(stored_weights, "_folded_away", lambda base, stored: False)  # a runtime that keeps the Cast/Mul
    model = _conv_chain(layers=2)
    quantized, stats, entry = quantize(model, calibration_for(model), latency="auto")
    assert entry["status"] == "unchanged" and stats["quantized"] == 0 and stats["stored_int8"] == 0
    assert quantized.SerializeToString() == model.SerializeToString()
    trial = stats["stored_weights"]["trials"][0]
    assert trial["ok"] and trial["ms"] > trial["base_ms"] and trial["against"] == "float"


def test_folded_weights_onnxruntime_folds_away_at_load_are_kept_without_timing(monkeypatch):
    # the timer's noise on a small model exceeds the folded form's tolerance; the graph
    # onnxruntime builds is the same with the weights stored, so nothing is timed
    original = Planner._medians

    def timed(self, float_model, int8_model, float_feed, int8_feed, purpose, **kwargs):
        assert purpose != "quantize: stored weights", "a folded-away form was timed"
        if purpose == "quantize: layer":
            return 1.0, 2.0
        return original(self, float_model, int8_model, float_feed, int8_feed, purpose, **kwargs)

    monkeypatch.setattr(Planner, "_medians", timed)
    model = _conv_chain(layers=2)
    quantized, stats, entry = quantize(model, calibration_for(model), latency="auto")
    assert entry["status"] == "accepted" and stats["quantized"] == 0 and stats["stored_int8"] == 2
    trial = stats["stored_weights"]["trials"][0]
    assert trial["ok"] and trial["folded_at_load"] and stats["stored_weights"]["form"] == "folded"
    assert not _float_matrices(quantized)
    ops = ort_optimized_ops(quantized)
    assert ops["Cast"] == 0 and ops["Mul"] == 0, ops


def test_weights_inside_if_branches_are_stored_in_the_branch_that_reads_them():
    import trait_models

    model = trait_models.if_with_weights()
    calibration = {name: np.stack([trait_models.if_feeds(flag=bool(s % 2), seed=s)[name] for s in range(8)])
                   for name in ("x", "flag")}
    quantized, stats, entry = quantize(model, calibration, latency="off")
    assert entry["status"] == "accepted" and stats["stored_weights"]["other_weights"]
    onnx.checker.check_model(quantized, full_check=True)
    (branching,) = [node for node in quantized.graph.node if node.op_type == "If"]
    for branch in branching.attribute:  # each body's own weight is int8, cast back inside the body
        assert [t.data_type for t in branch.g.initializer if len(t.dims) == 2 and min(t.dims) > 1] == [TensorProto.INT8]
        assert "Cast" in [node.op_type for node in branch.g.node]
    assert not _float_matrices(quantized) and quantized.ByteSize() < 0.35 * model.ByteSize()
    for flag in (True, False):
        feeds = trait_models.if_feeds(flag=flag, seed=11)
        for optimize in (False, True):
            assert output_metrics(run(model, feeds)[0], run(quantized, feeds, optimize)[0])["cosine"] >= 0.999


def test_storing_weights_may_use_half_the_room_the_plan_left():
    from graphopt.verify.metrics import Budget
    from graphopt_plugins.quantize.stored_weights import _half_the_room

    assert _half_the_room(Budget(cos=0.99), {"cosine": 0.994, "sqnr_db": 30.0}) == {"cosine": 0.992}
    assert _half_the_room(Budget(cos=0.99, sqnr=20.0), {"cosine": 1.0, "sqnr_db": 30.0}) == {"cosine": 0.995, "sqnr_db": 25.0}


def test_when_every_layer_at_once_breaks_the_budget_the_best_quantizable_half_is_tried():
    model = _conv_chain(layers=4, outlier_layer=1)  # block1's weight loses most to int8
    calibration = _spiky_calibration(model)
    _, stats, _ = quantize(model, calibration, latency="off", budget="cos=0.9999", mode="static")
    trials = stats["stored_weights"]["trials"]
    assert [(t["layers"], t["form"], t["ok"]) for t in trials] == [(4, "folded", False), (2, "targets", True)]
    stored = {row["node"] for row in stats["layers"] if row["decision"] == "int8 weights"}
    assert len(stored) == 2 and "block1/conv" not in stored


def test_cleanup_run_again_on_the_result_keeps_the_stored_weights_int8():
    # A second graphopt run (cleanup folds constants) must not fold Cast(int8) -> float back.
    model = _conv_chain(layers=3)
    calibration = _spiky_calibration(model)
    quantized, stats, _ = quantize(model, calibration, latency="off", budget="cos=0.999", mode="static")
    assert stats["stored_int8"] >= 1
    import graphopt

    again = graphopt.optimize(quantized, passes=["cleanup", "fuse"], never_slower=False)
    assert again.model.ByteSize() <= quantized.ByteSize() and not _float_matrices(again.model)
