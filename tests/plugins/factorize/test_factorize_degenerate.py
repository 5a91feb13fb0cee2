"""factorize on statistics real models give (issue 22.4): regularised or skipped with a reason, never a crash."""

from __future__ import annotations

import numpy as np

import graphopt
import trait_models
from factorize_support import factorize, run, single_layer
from graphopt.verify import Budget, Verifier, split_samples


def _saturated(count: int, seed: int) -> np.ndarray:
    """Inputs like a sigmoid gate stuck near 1: 64 nearly identical features, one exactly constant."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(count, 256, 1))
    rows = (base + 1e-4 * rng.normal(size=(count, 256, 64))) * 100.0
    rows[..., 0] = 100.0
    return rows.astype(np.float32)


def test_a_wide_layer_on_saturated_inputs_is_fitted_not_crashed():
    # N > K takes the Cholesky route, which a plain 1e-6 ridge could not factor on these inputs
    # (LinAlgError: Matrix is not positive definite, exit 3, before graphopt/statistics.py)
    weight = np.random.default_rng(0).normal(size=(64, 256))
    model = single_layer("MatMul", [256, 64], weight)
    factorized, entry = factorize(model, calibration={"x": _saturated(16, 1)}, rank_by="max_error", max_error=0.05)
    assert entry["status"] in ("accepted", "unchanged")
    feeds = {"x": _saturated(1, 2)[0]}
    expected, actual = run(model, feeds)[0], run(factorized, feeds)[0]
    assert np.all(np.isfinite(actual))
    cosine = float(np.sum(expected * actual) / np.linalg.norm(expected) / np.linalg.norm(actual))
    assert cosine > 0.99


def test_non_finite_activations_leave_the_layer_alone_with_a_reason():
    weight = np.random.default_rng(0).normal(size=(64, 64))
    model = single_layer("MatMul", [8, 64], weight)
    calibration = np.random.default_rng(1).normal(size=(4, 8, 64)).astype(np.float32)
    calibration[1, 3, 7] = np.inf
    factorized, entry = factorize(model, calibration={"x": calibration}, method="data", budget="cos=1e-6")
    assert entry["status"] == "unchanged"
    assert entry["details"]["skipped_by_statistics"][0]["reason"].startswith("its input statistics are not finite")


def test_crnn_with_an_lstm_factorizes_within_the_per_sample_budget():
    model = trait_models.crnn_lstm()
    samples = [trait_models.crnn_feeds(seed=seed) for seed in range(12)]
    calibration = {name: np.stack([s[name] for s in samples[:8]]) for name in samples[0]}
    held_out = {name: np.stack([s[name] for s in samples[8:]]) for name in samples[0]}
    result = graphopt.optimize(model, passes=["cleanup", "fuse", "factorize"], calibration=calibration,
                               inputs=held_out, budget="cos=0.99")
    verifier = Verifier(split_samples(held_out))
    verdict = verifier.judge(verifier.outputs(model), verifier.outputs(result.model), budget=Budget(cos=0.99))
    assert verdict.ok, verdict.failures
    assert all(entry["status"] != "failed" for entry in result.report["passes"])
