"""Budgets hold per sample: the worst sample is compared, the pooled figure is reported beside it."""

import numpy as np
import pytest

from graphopt.verify import Budget, Verifier, sample_metrics
from graphopt.verify.metrics import stacked_sample_metrics


def _one_loud_sample():
    """Four samples: one with a 100× larger output kept exactly, three small ones badly kept."""
    rng = np.random.default_rng(0)
    references = [rng.normal(size=64) * (100.0 if index == 0 else 1.0) for index in range(4)]
    candidates = [ref.copy() if index == 0 else ref + rng.normal(size=64) * 0.5 for index, ref in enumerate(references)]
    return references, candidates


def test_worst_sample_is_what_a_budget_compares():
    references, candidates = _one_loud_sample()
    metrics = sample_metrics(references, candidates)
    assert metrics["cosine_pooled"] > 0.99  # the loud sample hides the others when pooled
    assert metrics["cosine"] < 0.95 and metrics["worst_sample"] in (1, 2, 3)
    assert metrics["cosine"] <= metrics["cosine_mean"] <= 1.0 and metrics["samples"] == 4
    assert metrics["sqnr_db"] <= metrics["sqnr_db_mean"]
    problems = Budget(cos=0.99).violations("y", metrics)
    assert problems and "worst-sample cosine" in problems[0] and "pooled" in problems[0]


def test_verifier_judges_the_worst_sample():
    references, candidates = _one_loud_sample()
    verdict = Verifier([]).judge([{"y": r.astype(np.float32)} for r in references],
                                 [{"y": c.astype(np.float32)} for c in candidates], budget=Budget(cos=0.99))
    assert not verdict.ok
    entry = verdict.outputs["y"]
    assert entry["cosine"] < 0.95 and entry["cosine_pooled"] > 0.99 and entry["within"] is False


def test_a_silent_sample_kept_silent_is_not_a_failure():
    references = [np.zeros(16), np.ones(16)]
    candidates = [np.zeros(16), np.ones(16) * 1.01]
    assert sample_metrics(references, candidates)["cosine"] == pytest.approx(1.0)


def test_a_silent_sample_made_loud_is_a_failure():
    references = [np.zeros(16), np.ones(16)]
    candidates = [np.ones(16), np.ones(16)]
    assert sample_metrics(references, candidates)["cosine"] < 0.5


def test_stacked_form_splits_on_the_first_axis():
    references, candidates = _one_loud_sample()
    assert stacked_sample_metrics(np.stack(references), np.stack(candidates)) == sample_metrics(references, candidates)
