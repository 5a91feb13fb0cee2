"""graphopt_plugins/quantize/numerics.py: per-channel int8 and the weight SQNR the report gives per layer."""

import math

import numpy as np

from graphopt_plugins.quantize.numerics import quantize_per_channel, weight_sqnr_db


def test_per_channel_scales_follow_each_channel_range():
    weight = np.array([[1.0, -2.0], [0.01, 0.02]], np.float32)  # channel 1 is 100x smaller
    quantized, scale = quantize_per_channel(weight, axis=0)
    assert quantized.dtype == np.int8 and np.abs(quantized).max() == 127
    np.testing.assert_allclose(scale, [2.0 / 127, 0.02 / 127], rtol=1e-6)
    np.testing.assert_allclose(quantized * scale[:, None], weight, atol=np.max(scale) / 2)


def test_weight_sqnr_is_infinite_when_exact_and_about_int8s_otherwise():
    exact = np.array([[127.0, -64.0, 1.0]], np.float32)
    assert math.isinf(weight_sqnr_db(exact, axis=0))
    noisy = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    assert 30 < weight_sqnr_db(noisy, axis=0) < 45  # uniform int8 noise on a Gaussian: ~38 dB
    assert weight_sqnr_db(noisy, axis=0, qmax=7) < weight_sqnr_db(noisy, axis=0) - 20  # int4
