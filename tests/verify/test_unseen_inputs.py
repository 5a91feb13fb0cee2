"""graphopt/verify/unseen.py: what a lossy result is predicted to do on inputs it was not judged on."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.verify.metrics import Budget, measure_outputs, output_metrics
from graphopt.verify.unseen import at_decision_boundary, predicted_worst, probability_axis
from graphopt_plugins.quantize.accuracy import worst_metrics


def _softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)


def _with_cosine(reference: np.ndarray, cosine: float, rng) -> np.ndarray:
    """`reference` plus noise orthogonal to it, sized so the two keep `cosine`."""
    noise = rng.standard_normal(reference.shape)
    noise -= (noise.ravel() @ reference.ravel()) / (reference.ravel() @ reference.ravel()) * reference
    noise *= np.linalg.norm(reference) * np.tan(np.arccos(cosine)) / np.linalg.norm(noise)
    return (reference + noise).astype(np.float32)


def test_a_wide_spread_predicts_a_worse_new_sample_than_any_judged_one():
    spread = list(1.0 - np.logspace(-5, -2.1, 16))  # worst judged 0.99206
    predicted = predicted_worst(spread, "cosine")
    assert predicted < min(spread) and predicted < 0.99
    narrow = list(1.0 - np.linspace(0.0020, 0.0025, 16))
    assert 0.99 < predicted_worst(narrow, "cosine") <= min(narrow)


def test_few_samples_say_nothing_about_the_spread_and_sqnr_is_predicted_on_its_own_scale():
    assert predicted_worst([0.999, 0.9999, 0.995], "cosine") == 0.995
    sqnrs = [30.0, 40.0, 35.0, 45.0, 32.0, 38.0]
    assert predicted_worst(sqnrs, "sqnr_db") < 30.0
    assert predicted_worst([float("inf")] * 6, "sqnr_db") == float("inf")


def test_a_probability_output_is_found_on_its_class_axis_and_nothing_else_is():
    rng = np.random.default_rng(0)
    rows = [_softmax(rng.standard_normal((1, 7, 10))) for _ in range(3)]
    assert probability_axis(rows) == 2
    maps = [_softmax(rng.standard_normal((1, 4, 5, 5)), axis=1) for _ in range(3)]
    assert probability_axis(maps) == 1
    assert probability_axis([np.abs(r) * 2 for r in rows]) is None  # not normalised
    assert probability_axis([rng.standard_normal((1, 10)).astype(np.float32)]) is None  # logits
    assert probability_axis([np.ones((1, 1), np.float32)]) is None  # one class is no distribution


def test_at_the_boundary_the_reference_ties_and_the_candidate_splits_by_its_log_odds_error():
    logits = np.array([[8.0, 1.0, -3.0]])
    moved = logits + np.array([[0.7, 0.0, 0.1]])  # the log-odds of the top two moved by 0.7
    ref, cand = at_decision_boundary(_softmax(logits), _softmax(moved), axis=1)
    assert ref[0] == pytest.approx(ref[1])
    assert cand[0] / (cand[0] + cand[1]) == pytest.approx(1 / (1 + np.exp(-0.7)), rel=1e-4)
    assert output_metrics(_softmax(logits), _softmax(moved))["cosine"] > 0.9999  # saturated: the error is invisible
    assert output_metrics(ref, cand)["cosine"] < 0.99  # at a near-tie it is not
    same_ref, same_cand = at_decision_boundary(_softmax(logits), _softmax(logits), axis=1)
    assert np.allclose(same_ref, same_cand)


def test_a_plan_whose_judged_worst_meets_the_budget_but_whose_spread_does_not_is_refused():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((16, 1, 64)).astype(np.float32)
    cosines = 1.0 - np.logspace(-5, -2.1, 16)
    spread = np.stack([_with_cosine(r, c, rng) for r, c in zip(reference, cosines)])
    judged = worst_metrics({"y": reference}, {"y": spread}, Budget(cos=0.99))
    assert judged["cosine"] >= 0.99 and not judged["ok"]
    assert "predicted for a new input" in judged["violations"][0]
    steady = np.stack([_with_cosine(r, 0.998, rng) for r in reference])
    assert worst_metrics({"y": reference}, {"y": steady}, Budget(cos=0.99))["ok"]


def test_a_saturated_classifier_whose_logits_moved_is_refused_at_its_decision_boundary():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((16, 1, 4)).astype(np.float32) * 2
    logits[:, 0, 0] += 12.0  # every judged sample confident
    reference = _softmax(logits)
    candidate = _softmax(logits + rng.normal(0.0, 0.5, logits.shape).astype(np.float32))
    measured = measure_outputs({"p": reference}, {"p": candidate}, boundary=True)
    assert measured["p"]["cosine"] > 0.999 and measured["p@boundary"]["cosine"] < 0.99
    judged = worst_metrics({"p": reference}, {"p": candidate}, Budget(cos=0.99))
    assert not judged["ok"] and any("p@boundary" in text for text in judged["violations"])
    close = _softmax(logits + rng.normal(0.0, 0.01, logits.shape).astype(np.float32))
    assert worst_metrics({"p": reference}, {"p": close}, Budget(cos=0.99))["ok"]
