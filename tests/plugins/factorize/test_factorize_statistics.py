"""graphopt_plugins/factorize/statistics.py: im2col patches times the weight matrix are the Conv's output."""

import numpy as np
import pytest

from factorize_support import run, single_layer
from graphopt import convert
from graphopt_plugins.factorize.sites import find_sites
from graphopt_plugins.factorize.statistics import collect, conv_geometry, patches


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"pads": [0, 2, 1, 0], "strides": [2, 1], "dilations": [1, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
])
def test_patches_times_weight_equal_the_conv_output(attrs):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    model = single_layer("Conv", [2, 3, 9, 8], weight, **attrs)
    site = find_sites(convert.import_graph(model), "channel", {"Conv"})[0][0]
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    expected = run(model, {"x": x})[0]  # (B, Cout, H', W')
    batch, out_h, out_w, _ = conv_geometry(site, x.shape)
    assert expected.shape == (batch, 5, out_h, out_w)
    rows = patches(site, x, limit=10**6, rng=np.random.default_rng(0))  # every position, in order
    computed = (rows @ site.weight).reshape(batch, out_h, out_w, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(computed, expected, rtol=1e-4, atol=1e-4)


def test_collect_accumulates_each_sites_input_gram_and_the_outputs():
    rng = np.random.default_rng(1)
    model = single_layer("MatMul", [3, 6], rng.standard_normal((6, 4)))
    site = find_sites(convert.import_graph(model), "channel", {"MatMul"})[0][0]
    samples = {"x": rng.standard_normal((5, 3, 6)).astype(np.float32)}
    data = collect(model, samples, [site], rows_per_sample=100, rng=np.random.default_rng(0))
    rows = samples["x"].reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(data.grams[site.index], rows.T @ rows, rtol=1e-5)
    odd = samples["x"][1::2].reshape(-1, 6).astype(np.float64)  # samples 1 and 3
    np.testing.assert_allclose(data.odd_grams[site.index], odd.T @ odd, rtol=1e-5)
    assert data.rows_seen[site.index] == 15 and data.input_shapes[site.index] == (3, 6)
    assert data.outputs["y"].shape == (5, 3, 4)
