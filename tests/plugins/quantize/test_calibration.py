"""graphopt_plugins/quantize/calibration.py: each method's range on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_plugins.quantize.calibration import choose_range, collect_ranges
from graphopt_plugins.quantize.numerics import fake_quantize
from quantize_support import calibration_for, single_op_model


def _heavy_tailed(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(20000).astype(np.float32)
    values[:5] = [60.0, -55.0, 40.0, 35.0, -30.0]  # a few outliers stretch minmax ~15x
    return values


def test_minmax_is_the_exact_extremes():
    values = _heavy_tailed()
    assert choose_range(values, float(values.min()), float(values.max()), "minmax", 99.99, False) == (-55.0, 60.0)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_clipping_methods_ignore_outliers_and_lower_the_error(method):
    values = _heavy_tailed()
    low, high = choose_range(values, float(values.min()), float(values.max()), method, 99.9, False)
    assert -55.0 < low < 0 < high < 60.0
    assert high < 20.0, f"{method} kept the outliers' range: {high}"
    bulk = values[5:]
    clipped_error = np.mean((fake_quantize(bulk, low, high, False) - bulk) ** 2)
    minmax_error = np.mean((fake_quantize(bulk, -55.0, 60.0, False) - bulk) ** 2)
    assert clipped_error < minmax_error / 4


def test_mse_picks_the_range_with_the_least_total_error():
    rng = np.random.default_rng(0)
    values = rng.laplace(size=20000).astype(np.float32)  # long tails: clipping some of them pays
    low, high = float(values.min()), float(values.max())
    chosen = choose_range(values, low, high, "mse", 99.99, False)
    assert low < chosen[0] < 0 < chosen[1] < high
    error = lambda r: np.mean((fake_quantize(values, *r, False) - values) ** 2)  # noqa: E731
    assert error(chosen) < error((low, high))
    assert error(chosen) <= min(error((low * f, high * f)) for f in (0.3, 0.5, 0.7, 0.9))


def test_entropy_on_a_non_negative_tensor_keeps_zero_as_the_low_end():
    values = np.abs(_heavy_tailed())
    low, high = choose_range(values, 0.0, float(values.max()), "entropy", 99.99, False)
    assert low == 0.0 and 0 < high < 60.0


def test_collect_ranges_observes_every_sample():
    model = single_op_model("Conv", relu=True)
    calibration = calibration_for(model, samples=3)
    calibration["x"][2] *= 10  # the last sample holds the extremes
    ranges = collect_ranges(model, calibration, ["x", "y"], "minmax", 99.99, False)
    assert ranges["x"] == (float(calibration["x"].min()), float(calibration["x"].max()))
    assert ranges["y"][0] == 0.0 and ranges["y"][1] > 0  # after the Relu
