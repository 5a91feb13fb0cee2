"""SparseGPT and the least-squares helpers on synthetic layers with correlated inputs."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_plugins.prune.reconstruct import fold_regression, output_error, regress_removed, regression_errors, sparsegpt
from graphopt_plugins.prune.unstructured import magnitude_mask


def _layer(rows=24, features=64, samples=2000, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(features, features)) * (rng.uniform(0.05, 1.0, features))[None, :]
    x = rng.normal(size=(samples, features)) @ mixing  # correlated features: where OBS beats magnitude
    return rng.normal(size=(rows, features)), x


@pytest.mark.parametrize("pattern", [(0, 0), (2, 4)])
def test_sparsegpt_beats_magnitude_on_held_out_rows(pattern):
    weight, x = _layer()
    train, test = x[:1500], x[1500:]
    keep_n, m = pattern
    sparsity = 0.5
    plain = magnitude_mask(weight, sparsity, keep_n, m)
    pruned = sparsegpt(weight, train.T @ train, sparsity, prune_n=m - keep_n if m else 0, m=m)
    assert np.isclose((pruned == 0).mean(), 0.5, atol=0.01)
    if m:
        assert ((pruned.reshape(len(pruned), -1, m) != 0).sum(axis=-1) <= keep_n).all()
    hessian = test.T @ test
    assert output_error(weight, pruned, hessian) < 0.7 * output_error(weight, plain, hessian)


def test_sparsegpt_at_zero_sparsity_keeps_weights():
    weight, x = _layer()
    np.testing.assert_allclose(sparsegpt(weight, x.T @ x, 0.0), weight, atol=1e-9)


def test_regression_recovers_linearly_dependent_features_exactly():
    rng = np.random.default_rng(3)
    kept_x = rng.normal(size=(500, 6))
    removed_x = kept_x @ rng.normal(size=(6, 2)) + 0.5  # removed = linear in kept, plus an offset
    x = np.concatenate([kept_x, removed_x], axis=1)
    rows = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    gram = rows.T @ rows
    weight = rng.normal(size=(4, 8))
    kept, removed = np.arange(6), np.array([6, 7])
    coef = regress_removed(gram, kept, removed, intercept=True, damp=0.0)
    folded, bias = fold_regression(weight, kept, removed, coef)
    np.testing.assert_allclose(x[:, :6] @ folded[:, kept].T + bias, x @ weight.T, atol=1e-6)
    plain, refit = regression_errors(gram, weight, kept, removed, coef)
    assert plain > 0.01 and refit < 1e-9
