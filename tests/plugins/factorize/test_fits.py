"""graphopt_plugins/factorize/fits.py: which fit a site gets, and error curves judged on samples the fit did not see."""

import numpy as np

from factorize_support import single_layer
from graphopt import convert
from graphopt_plugins.factorize.fits import fit_site
from graphopt_plugins.factorize.lowrank import fit_data_aware
from graphopt_plugins.factorize.sites import find_sites
from graphopt_plugins.factorize.statistics import collect

RNG = np.random.default_rng(0)


def _site_and_data(model, samples, op):
    site = find_sites(convert.import_graph(model), "auto", {op})[0][0]
    data = collect(model, samples, [site], rows_per_sample=512, rng=np.random.default_rng(0))
    site.rows = int(np.prod(data.input_shapes[site.index][:-1])) if op == "MatMul" else None
    return site, data


def test_a_layer_seeing_one_row_per_sample_is_not_free_to_cut():
    # squeeze-excite-like: 8 samples of 1 row each into a 64→64 layer; in-sample, rank 8 is exact
    model = single_layer("MatMul", [1, 64], RNG.standard_normal((64, 64)))
    site, data = _site_and_data(model, {"x": RNG.standard_normal((8, 1, 64)).astype(np.float32)}, "MatMul")
    assert fit_data_aware(site.weight, data.grams[site.index]).errors[8] < 1e-3
    fit = fit_site(site, "data", data, "auto", 8)
    assert fit.errors[8] > 0.5 and fit.errors[-1] == 0.0
    assert np.all(np.diff(fit.errors) <= 0)  # the allocation needs non-increasing errors


def test_a_layer_seeing_many_rows_keeps_its_in_sample_errors():
    model = single_layer("MatMul", [256, 16], RNG.standard_normal((16, 16)))
    site, data = _site_and_data(model, {"x": RNG.standard_normal((4, 256, 16)).astype(np.float32)}, "MatMul")
    in_sample = fit_data_aware(site.weight, data.grams[site.index]).errors
    fit = fit_site(site, "data", data, "auto", 8)
    np.testing.assert_allclose(fit.errors, in_sample, atol=0.05)  # 1000 rows for 16 inputs: little to correct


def test_without_data_an_input_split_site_gets_plain_svd_of_its_own_matrix():
    model = single_layer("Conv", [1, 6, 5, 5], RNG.standard_normal((3, 6, 3, 3)), pads=[1, 1, 1, 1])
    site = find_sites(convert.import_graph(model), "input", {"Conv"})[0][0]
    fit = fit_site(site, "svd", None, "input", 8)
    first, second = fit.factors(6)
    assert first.shape == (6, 6) and second.shape == (6, 27)
    np.testing.assert_allclose(first @ second, site.weight.reshape(6, 27), atol=1e-9)
