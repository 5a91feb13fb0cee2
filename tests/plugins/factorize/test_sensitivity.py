"""graphopt_plugins/factorize/sensitivity.py: a layer whose error the model amplifies weighs more."""

import numpy as np

from factorize_support import single_layer
from graphopt import convert
from graphopt_plugins.factorize.lowrank import fit_svd
from graphopt_plugins.factorize.sensitivity import measure_sensitivity
from graphopt_plugins.factorize.sites import find_sites


def test_the_branch_that_dominates_the_output_is_the_sensitive_one():
    # y = x·A + 10·x·B: the same error in B's factors moves y ten times as much.
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((32, 32)) for _ in range(2)]
    sites, fits = [], {}
    for index, weight in enumerate(weights):
        site = find_sites(convert.import_graph(single_layer("MatMul", [4, 32], weight)), "channel", {"MatMul"})[0][0]
        site.index, site.rows = index, 4
        sites.append(site)
        fits[index] = fit_svd(site.weight)
    x = rng.standard_normal((16, 32))
    exact = x @ weights[0] + 10 * x @ weights[1]

    def loss_with(chosen):
        parts = [x @ (chosen[i][0] @ chosen[i][1] if i in chosen else weights[i]) for i in range(2)]
        y = parts[0] + 10 * parts[1]
        return 1 - float(np.sum(y * exact) / np.linalg.norm(y) / np.linalg.norm(exact))

    measured = measure_sensitivity(sites, fits, loss_with, margin=0.1, multiple=8, probe_error=0.5)
    assert set(measured) == {0, 1}
    assert measured[1] > 10 * measured[0]
