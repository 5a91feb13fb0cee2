"""Lossless tolerances, lossy metrics and budgets."""

import math

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.verify import Budget, output_metrics, tolerance_for, within_tolerance


def test_metrics_of_identical_outputs():
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    metrics = output_metrics(x, x.copy())
    assert metrics["cosine"] == pytest.approx(1.0) and metrics["sqnr_db"] == math.inf and metrics["max_abs"] == 0


def test_sqnr_and_cosine_of_known_noise():
    x = np.ones(1000)
    noisy = x + 0.1  # noise power 0.01 of signal power 1 -> 20 dB
    metrics = output_metrics(x, noisy)
    assert metrics["sqnr_db"] == pytest.approx(20.0, abs=1e-6)
    assert metrics["max_abs"] == pytest.approx(0.1)
    assert metrics["cosine"] == pytest.approx(1.0)
    assert output_metrics(x, -x)["cosine"] == pytest.approx(-1.0)


def test_lossless_tolerance_depends_on_dtype():
    assert tolerance_for(np.float32).rtol == 1e-3
    assert tolerance_for(np.float16).rtol == 1e-2
    ints = np.arange(10, dtype=np.int64)
    assert not within_tolerance(ints, ints + np.eye(1, 10, 3, dtype=np.int64)[0])
    x = np.array([1.0, np.nan], dtype=np.float32)
    assert within_tolerance(x, x.copy())
    assert not within_tolerance(x, np.array([1.0, 0.0], dtype=np.float32))
    assert within_tolerance(np.float32([100.0]), np.float32([100.05]))
    assert not within_tolerance(np.float32([100.0]), np.float32([100.5]))


def test_budget_parsing_and_violations():
    budget = Budget.parse("cos=0.99,sqnr:30")
    assert budget == Budget(cos=0.99, sqnr=30.0)
    assert budget.violations("y", {"cosine": 0.995, "sqnr_db": 35.0, "max_abs": 1, "max_rel": 1}) == []
    problems = budget.violations("y", {"cosine": 0.98, "sqnr_db": 25.0, "max_abs": 1, "max_rel": 1})
    assert problems == ["output 'y': cosine 0.980000 < 0.99", "output 'y': SQNR 25.00 dB < 30.0"]
    assert Budget(cos=0.9).merge(Budget(cos=0.99, abs=0.1)) == Budget(cos=0.99, abs=0.1)
    with pytest.raises(UsageError):
        Budget.parse("accuracy=0.9")


def test_sequence_and_optional_outputs_are_compared_by_structure_and_values():
    from graphopt.verify import Verifier

    verifier = Verifier([{}])
    seq = [np.ones(3, np.float32), np.zeros((2, 2), np.float32)]
    same = verifier.judge([{"s": seq, "o": None}], [{"s": [a.copy() for a in seq], "o": None}], budget=None)
    assert same.ok, same.failures
    shorter = verifier.judge([{"s": seq, "o": None}], [{"s": seq[:1], "o": None}], budget=None)
    assert not shorter.ok and "shape changed" in shorter.failures[0]
    present = verifier.judge([{"o": None}], [{"o": np.ones(1, np.float32)}], budget=None)
    assert not present.ok
