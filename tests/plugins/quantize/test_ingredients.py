"""graphopt_plugins/quantize/ingredients.py: accuracy fixes tried before layers are kept float."""

from __future__ import annotations

import numpy as np
from quantize_support import quantize
from test_bias_correction import _coarse_conv

from graphopt_plugins.quantize.ingredients import harmful


def _case():
    model = _coarse_conv()
    calibration = {"x": np.random.default_rng(1).random((16, 1, 16, 12, 12), dtype=np.float32)}
    cosine = {}
    for corrected in (False, True):
        _, stats, _ = quantize(model, calibration, mode="static", reduce_range="on", bias_correction=corrected,
                               latency="off", auto=False)
        cosine[corrected] = stats["cosine"]
    # A budget the uncorrected plan misses and the corrected one clears by half its room.
    assert cosine[False] < 2 * cosine[True] - 1
    return model, calibration, f"cos={(cosine[False] + 2 * cosine[True] - 1) / 2:.7f}", cosine


def test_a_layer_bias_correction_saves_is_int8_instead_of_float():
    model, calibration, budget, _ = _case()
    quantized, stats, entry = quantize(model, calibration, mode="static", reduce_range="on", latency="off", budget=budget)
    assert entry["status"] == "accepted"
    assert stats["chosen_plan"] == "static+bias_correction" and stats["quantized"] == 1 and stats["bias_corrected"] == 1
    trials = {row["mode"]: row for row in stats["mode_trials"]}
    assert trials["static"]["quantized"] == 0 and trials["static+bias_correction"]["quantized"] == 1
    assert "static+adaptive_rounding" not in trials  # the search stops at the first fix that keeps nothing float for accuracy
    assert stats["cosine"] >= float(budget.split("=")[1])


def test_no_fix_is_tried_past_search_seconds():
    model, calibration, budget, _ = _case()
    _, stats, _ = quantize(model, calibration, mode="static", reduce_range="on", latency="off", budget=budget, search_seconds=0)
    assert stats["chosen_plan"] == "static" and stats["quantized"] == 0
    assert [row["mode"] for row in stats["mode_trials"]] == ["static", "static+bias_correction", "static+adaptive_rounding",
                                                             "static+percentile"]
    assert all("search_seconds=0" in row["why"] for row in stats["mode_trials"][1:])


def test_a_plan_that_kept_nothing_float_for_accuracy_searches_nothing():
    model, calibration, _, _ = _case()
    _, stats, _ = quantize(model, calibration, mode="static", reduce_range="on", latency="off", budget="cos=0.5")
    assert harmful(stats) == 0 and "mode_trials" not in stats


def test_a_fix_that_meets_the_budget_only_at_its_edge_is_not_a_candidate():
    model, calibration, _, cosine = _case()
    edge = f"cos={(2 * cosine[True] - 1 + cosine[True]) / 2:.7f}"  # met by the corrected plan, but not by half the room
    _, stats, _ = quantize(model, calibration, mode="static", reduce_range="on", latency="off", budget=edge)
    assert stats["chosen_plan"] == "static" and stats["quantized"] == 0
    (refused,) = [row for row in stats["mode_trials"] if row["mode"] == "static+bias_correction"]
    assert "half its room" in refused["why"] and refused["quantized"] == 1
