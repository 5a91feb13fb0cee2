"""Rank selection: per-layer rules, and a global target allocated across layers by sensitivity.

Every rule yields, per site, a rank or None (leave the layer alone). A rank is only ever
taken when the two factors really cost less: r·(K+N) ≤ (1 − margin)·K·N in parameters and
MACs (`Site.max_saving_rank`). `strength` (1 = as asked, → 0 = barely) scales how far a rule
goes, which is how the pass backs off when the result misses its accuracy budget.

The global target (`params=0.3`, `macs=0.25`: that fraction of the whole model removed) is
allocated greedily, as AIMET's compression-ratio selection does: every candidate layer's
output error is known at every rank on the calibration data (the fits give it exactly), and
the step taken next is always the one that saves the most per unit of added loss, a layer's
loss being its squared error weighted by its measured end-to-end sensitivity (sensitivity.py).
With measured layer timings (latency.py), "saves the most" is counted in milliseconds.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator

from graphopt_plugins.factorize.latency import LayerTiming
from graphopt_plugins.factorize.lowrank import Factorization, rank_for_energy, rank_for_error, round_rank
from graphopt_plugins.factorize.sites import Site

__all__ = ["parse_target", "ranks_by_rule", "ranks_for_target", "allocation_steps", "first_paying_rank"]

logger = logging.getLogger(__name__)


def parse_target(text: str) -> tuple[str, float]:
    """`"macs=0.25"` → ("macs", 0.25); raises ValueError on anything else."""
    metric, sep, value = text.partition("=")
    metric = metric.strip()
    if not sep or metric not in ("macs", "params"):
        raise ValueError(f"target must be 'macs=FRACTION' or 'params=FRACTION', not {text!r}")
    fraction = float(value)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"target fraction must be in (0, 1), not {fraction}")
    return metric, fraction


def ranks_by_rule(sites: list[Site], fits: dict[int, Factorization], rule: str, value: float, strength: float,
                  margin: float, multiple: int) -> dict[int, int]:
    """Per-layer rules: `energy`, `rank_ratio` or `max_error`, scaled by `strength`."""
    chosen = {}
    for site in sites:
        fit = fits[site.index]
        if rule == "energy":
            rank = rank_for_energy(fit.errors, 1.0 - (1.0 - value) * strength)
        elif rule == "max_error":
            rank = rank_for_error(fit.errors, value * strength)
        else:  # rank_ratio
            rank = int(round((1.0 - (1.0 - value) * strength) * fit.full_rank))
        rank = round_rank(rank, multiple, fit.full_rank)
        if rank <= site.max_saving_rank(margin, multiple):
            chosen[site.index] = rank
    return chosen


def ranks_for_target(sites: list[Site], fits: dict[int, Factorization], metric: str, fraction: float,
                     total: int, margin: float, multiple: int, weights: dict[int, float] | None = None,
                     timings: dict[int, LayerTiming] | None = None) -> dict[int, int]:
    """Ranks removing `fraction` of `total` (the model's MACs or params) at the least summed loss.

    A layer's loss at rank r is weights[layer]·e(r)² (its measured sensitivity; 1 without).
    With `timings` (latency.py) the steps are ordered by measured milliseconds saved per unit
    of loss instead of by `metric` saved, and a layer is only taken at ranks where its two
    factors run at least `margin` faster than it: the target is still counted in `metric`.
    """
    goal = fraction * total
    state: dict[int, int] = {}
    saved = 0
    for index, rank, saving in allocation_steps(sites, fits, metric, margin, multiple, weights, timings):
        if saved >= goal:
            break
        state[index] = rank
        saved += saving
    if saved < goal:
        logger.warning("factorize: target %s=%.3g not reachable; the layers it can touch save %.3g", metric, fraction,
                       saved / total if total else 0.0)
    return state


def allocation_steps(sites: list[Site], fits: dict[int, Factorization], metric: str, margin: float, multiple: int,
                     weights: dict[int, float] | None = None, timings: dict[int, LayerTiming] | None = None
                     ) -> Iterator[tuple[int, int, int]]:
    """The greedy allocation as a sequence of steps `(site index, new rank, metric saved)`, the
    cheapest in added loss per unit gained first: any prefix of it is the least-loss way found
    to save what that prefix saves (ranks_for_target stops at a target, the budget search
    bisects on the prefix length)."""
    cost = {"macs": lambda site, rank: site.macs(rank), "params": lambda site, rank: site.params(rank)}[metric]
    if timings is None:
        gain = cost
    else:
        def gain(site: Site, rank: int | None) -> float | None:
            return timings[site.index].ms(rank) if site.index in timings else None
    heap: list[tuple[float, int, int, int]] = []  # (added loss per unit gained, site, next rank, saving)

    def push(site: Site, current: int | None) -> None:
        step = max(multiple, 1)
        nxt = first_paying_rank(site, gain, margin, multiple) if current is None else current - step
        if nxt <= 0 or cost(site, nxt) is None or gain(site, nxt) is None:
            return
        saving = cost(site, current) - cost(site, nxt)
        gained = gain(site, current) - gain(site, nxt)
        errors = fits[site.index].errors
        weight = 1.0 if weights is None else weights.get(site.index, 1.0)
        loss = weight * (errors[nxt] ** 2 - (0.0 if current is None else errors[current] ** 2))
        if saving > 0:
            heapq.heappush(heap, (max(loss, 0.0) / max(gained, 1e-12), site.index, nxt, saving))

    by_index = {site.index: site for site in sites}
    for site in sites:
        push(site, None)
    while heap:
        _, index, rank, saving = heapq.heappop(heap)
        yield index, rank, saving
        push(by_index[index], rank)


def first_paying_rank(site: Site, gain, margin: float, multiple: int) -> int:
    """The largest rank that saves MACs and params, and whose `gain` (MACs or ms) is ≤ (1 − margin)× the layer's."""
    rank = site.max_saving_rank(margin, multiple)
    now = gain(site, None)
    if now is None:
        return 0
    while rank > 0 and gain(site, rank) > (1.0 - margin) * now:
        rank -= max(multiple, 1)
    return rank
