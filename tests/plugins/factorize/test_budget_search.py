"""rank_by=budget (graphopt_plugins/factorize/budget_search.py): which layers are probed, the
tightened budget, and the bisection on the greedy allocation's prefix."""

from __future__ import annotations

import types

import pytest

from graphopt.verify.metrics import Budget
from graphopt_plugins.factorize.budget_search import ranks_at, search_prefix, worth_probing


def test_worth_probing_orders_by_saving_and_drops_the_negligible_tail():
    sites = [types.SimpleNamespace(name=name, saving=saving) for name, saving in
             [("small", 5), ("big", 600), ("none", 0), ("mid", 300), ("tiny", 3)]]
    kept = worth_probing(sites, lambda site: site.saving, total=1000, floor=0.01)
    assert [site.name for site in kept] == ["big", "mid"]  # small + tiny = 8 < 1% of 1000
    everything = worth_probing(sites, lambda site: site.saving, total=1000, floor=0.0)
    assert [site.name for site in everything] == ["big", "mid", "small", "tiny"]  # a layer saving nothing is never probed


def test_tightened_keeps_a_share_of_each_bound_unspent():
    aim = Budget(cos=0.99, sqnr=20.0, abs=0.5).tightened(0.2)
    assert aim.cos == pytest.approx(0.992)
    assert aim.sqnr == pytest.approx(20.0 + 10 * 0.09691, abs=1e-3)
    assert aim.abs == pytest.approx(0.4)
    assert Budget(cos=0.99).tightened(0.0).cos == pytest.approx(0.99)


def _steps(count: int) -> list[tuple[int, int, int]]:
    return [(index % 3, 100 - index, 10) for index in range(count)]  # three sites, rank falling, 10 saved a step


def test_search_finds_the_longest_prefix_within_budget():
    judged = []

    def judge(ranks):
        judged.append(dict(ranks))
        saved = sum(100 - rank + 1 for rank in ranks.values())  # grows with the prefix
        return saved <= 120, 1.0 - saved / 1e4

    steps = _steps(60)
    count, probes = search_prefix(steps, judge, resolution=0.0, max_probes=20)
    assert probes[0].steps == 60 and not probes[0].within
    assert judge(ranks_at(steps, count))[0] and not judge(ranks_at(steps, count + 1))[0]
    assert len(probes) <= 8  # a bisection, not a sweep


def test_search_takes_the_whole_allocation_when_it_fits_and_honours_strength():
    count, probes = search_prefix(_steps(40), lambda ranks: (True, 1.0))
    assert count == 40 and len(probes) == 1
    half, _ = search_prefix(_steps(40), lambda ranks: (True, 1.0), strength=0.5)
    assert half == 20  # the cap: half of the whole saving


def test_search_returns_nothing_when_even_one_step_misses():
    count, probes = search_prefix(_steps(16), lambda ranks: (not ranks, 0.5), resolution=0.0)
    assert count == 0 and all(not probe.within for probe in probes)


def test_ranks_at_replays_the_last_rank_of_each_site():
    assert ranks_at([(0, 8, 1), (1, 16, 1), (0, 4, 1)], 3) == {0: 4, 1: 16}
    assert ranks_at([(0, 8, 1), (1, 16, 1), (0, 4, 1)], 1) == {0: 8}
