"""graphopt_plugins/factorize/lowrank.py: plain and activation-whitened SVD, their error curves, ranks."""

import numpy as np
import pytest

from graphopt_plugins.factorize.lowrank import (fit_data_aware, fit_svd, held_out_errors, rank_for_energy, rank_for_error,
                                                round_rank)


def _correlated_inputs(rows=2000, width=48, seed=0):
    """Inputs living mostly in an 8-dimensional subspace, as real activations do."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, width))
    return rng.standard_normal((rows, 8)) @ basis * 3 + 0.05 * rng.standard_normal((rows, width))


def _output_error(x, weight, fit, rank):
    first, second = fit.factors(rank)
    return np.linalg.norm(x @ weight - x @ first @ second) / np.linalg.norm(x @ weight)


@pytest.mark.parametrize("fitter", ["svd", "data"])
def test_exact_at_full_rank(fitter):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((48, 32))
    x = _correlated_inputs()
    fit = fit_svd(weight) if fitter == "svd" else fit_data_aware(weight, x.T @ x)
    first, second = fit.factors(fit.full_rank)
    assert fit.full_rank == 32
    np.testing.assert_allclose(first @ second, weight, rtol=1e-6, atol=1e-8)
    assert fit.errors[-1] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("fitter", ["svd", "svd_on_data", "data"])
def test_error_is_non_increasing_with_rank_and_matches_the_measured_error(fitter):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((48, 40))
    x = _correlated_inputs()
    gram = x.T @ x
    fit = {"svd": lambda: fit_svd(weight), "svd_on_data": lambda: fit_svd(weight, gram),
           "data": lambda: fit_data_aware(weight, gram)}[fitter]()
    assert np.all(np.diff(fit.errors) <= 1e-12)
    assert fit.errors[0] == pytest.approx(1.0)
    for rank in (4, 8, 16, 24):
        if fit.measured_on == "data":
            assert fit.errors[rank] == pytest.approx(_output_error(x, weight, fit, rank), rel=0.05, abs=1e-6)  # the fit's ridge moves tiny errors a little
        else:
            first, second = fit.factors(rank)
            measured = np.linalg.norm(weight - first @ second) / np.linalg.norm(weight)
            assert fit.errors[rank] == pytest.approx(measured, rel=1e-6)


def test_data_aware_beats_plain_svd_on_correlated_inputs_at_equal_rank():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((48, 48))
    x = _correlated_inputs()
    plain, aware = fit_svd(weight), fit_data_aware(weight, x.T @ x)
    for rank in (4, 8, 12, 24):
        assert _output_error(x, weight, aware, rank) < _output_error(x, weight, plain, rank)
    for rank in (8, 12):
        assert _output_error(x, weight, aware, rank) < 0.1 * _output_error(x, weight, plain, rank)
    # the inputs span about 8 directions: 8 ranks fitted to them leave little output error
    assert _output_error(x, weight, aware, 8) < 0.05


def test_rank_rules():
    errors = np.array([1.0, 0.5, 0.2, 0.1, 0.05, 0.0])
    assert rank_for_error(errors, 0.1) == 3
    assert rank_for_error(errors, 0.0) == 5
    assert rank_for_energy(errors, 0.99) == 3  # 1 - 0.1**2 = 0.99 kept
    assert round_rank(3, 8, 40) == 8
    assert round_rank(17, 8, 20) == 20
    assert round_rank(5, 1, 40) == 5


@pytest.mark.parametrize("shape", [(48, 32), (24, 40)])  # N ≤ K (eigh) and N > K (Cholesky)
def test_held_out_errors_are_the_errors_of_the_fit_on_other_inputs(shape):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal(shape)
    fitted_on = _correlated_inputs(rows=500, width=shape[0], seed=1)
    judged_on = _correlated_inputs(rows=500, width=shape[0], seed=2) + 0.3 * rng.standard_normal((500, shape[0]))
    errors = held_out_errors(weight, fitted_on.T @ fitted_on, judged_on.T @ judged_on)
    fit = fit_data_aware(weight, fitted_on.T @ fitted_on)
    for rank in (4, 8, 16):
        assert abs(errors[rank] - _output_error(judged_on, weight, fit, rank)) < 1e-3
    assert errors[0] == pytest.approx(1.0) and errors[-1] == pytest.approx(0.0, abs=1e-6)
    # judged on its own data, it is the fit's own error curve
    np.testing.assert_allclose(held_out_errors(weight, fitted_on.T @ fitted_on, fitted_on.T @ fitted_on), fit.errors,
                               atol=1e-6)


def test_a_fit_to_fewer_rows_than_inputs_is_exact_only_on_its_own_rows():
    # a squeeze-excite conv sees one row per image: 8 rows, 64 inputs
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((64, 64))
    fitted_on, judged_on = rng.standard_normal((8, 64)), rng.standard_normal((8, 64))
    assert fit_data_aware(weight, fitted_on.T @ fitted_on).errors[8] < 1e-3
    assert held_out_errors(weight, fitted_on.T @ fitted_on, judged_on.T @ judged_on)[8] > 0.5
