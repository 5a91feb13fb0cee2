"""graphopt_plugins/factorize/ranks.py: per-layer rules and the global target allocated by loss."""

import numpy as np
import pytest

from factorize_support import matmul_sites
from graphopt_plugins.factorize.ranks import parse_target, ranks_by_rule, ranks_for_target


def _two_layers(spectra):
    """Two 64×64 MatMul sites (4 rows each) with the given singular value spectra."""
    rng = np.random.default_rng(0)
    weights = []
    for spectrum in spectra:
        q1, _ = np.linalg.qr(rng.standard_normal((64, 64)))
        q2, _ = np.linalg.qr(rng.standard_normal((64, 64)))
        weights.append(q1 * spectrum @ q2)
    return matmul_sites(weights)


def test_parse_target():
    assert parse_target("macs=0.25") == ("macs", 0.25)
    for bad in ("macs", "flops=0.2", "params=1.5"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_rules_only_pick_ranks_that_save():
    sites, fits = _two_layers([np.geomspace(1, 1e-6, 64), np.ones(64)])
    chosen = ranks_by_rule(sites, fits, "max_error", 0.05, 1.0, margin=0.1, multiple=8)
    assert 0 in chosen and chosen[0] % 8 == 0 and fits[0].errors[chosen[0]] <= 0.05
    assert 1 not in chosen  # a flat spectrum needs nearly full rank, which would not save
    # the same rule at a lower strength keeps more rank
    looser = ranks_by_rule(sites, fits, "max_error", 0.05, 0.25, margin=0.1, multiple=8)
    assert looser.get(0, 64) >= chosen[0]


def test_global_target_goes_to_the_cheapest_layer_first_and_meets_the_target():
    sites, fits = _two_layers([np.geomspace(1, 1e-6, 64), np.ones(64)])
    total = sum(site.macs() for site in sites)
    chosen = ranks_for_target(sites, fits, "macs", 0.3, total, margin=0.1, multiple=8)
    saved = sum(sites[i].macs() - sites[i].macs(r) for i, r in chosen.items())
    assert saved >= 0.3 * total
    assert list(chosen) == [0]  # the decaying layer alone can pay for it
    # a large measured sensitivity on layer 0 moves the cut to layer 1
    weighted = ranks_for_target(sites, fits, "macs", 0.3, total, 0.1, 8, weights={0: 1e6, 1: 1.0})
    assert 1 in weighted
