"""`rank_by=budget`: as much factorization as the accuracy budget allows, found on held-out data.

A per-layer error rule (`max_error`) spends the same error on every layer, whatever the layer
saves and however much its error matters downstream; backing off from it halves every layer's
error at once. On PP-OCRv4 det that kept 9% of the MACs at cos 0.99 where a sensitivity-weighted
global allocation keeps 30% at the same worst-sample cosine. So this mode:

1. orders the layers by what they could save at most and measures the end-to-end sensitivity
   of the biggest ones only (`worth_probing`): the sweep stops once the layers left could not
   save `floor` of the model together, since they cannot change which steps come first;
2. lays out the greedy allocation as steps (ranks.allocation_steps: the step saving the most
   per unit of sensitivity-weighted loss first), so any prefix is the least-loss way found to
   save what it saves;
3. bisects on the prefix length, each probe one run of the factorized model over the held-out
   samples (one session, every sample), for the longest prefix whose every sample's outputs
   meet the budget tightened by `safety` — room for inputs the search never saw.

`strength` (< 1 after the pipeline's back-off) caps the prefix at that share of the largest
saving. The statistics and fits are computed once; every probe reuses them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from graphopt_plugins.factorize.sites import Site

__all__ = ["Probe", "worth_probing", "search_prefix", "ranks_at"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Probe:
    steps: int  # prefix length tried
    saved: int  # MACs (or params) that prefix saves
    worst_cosine: float
    within: bool

    def summary(self, total: int) -> dict:
        return {"steps": self.steps, "saved": round(self.saved / total, 4) if total else 0.0,
                "worst_cosine": round(self.worst_cosine, 6), "within_budget": self.within}


def worth_probing(sites: list[Site], potential: Callable[[Site], int], total: int, floor: float = 0.01) -> list[Site]:
    """The sites in decreasing order of what they could save at most, cut where the rest
    together could not save `floor` of `total`: those cannot move the allocation's outcome
    by more than that, and measuring each costs a model run."""
    ordered = sorted((site for site in sites if potential(site) > 0), key=potential, reverse=True)
    left = sum(potential(site) for site in ordered)
    kept = []
    for site in ordered:
        if kept and left < floor * total:
            break
        kept.append(site)
        left -= potential(site)
    return kept


def ranks_at(steps: list[tuple[int, int, int]], count: int) -> dict[int, int]:
    """Each site's rank after the first `count` steps."""
    ranks: dict[int, int] = {}
    for index, rank, _ in steps[:count]:
        ranks[index] = rank
    return ranks


def search_prefix(steps: list[tuple[int, int, int]], judge: Callable[[dict[int, int]], tuple[bool, float]],
                  strength: float = 1.0, resolution: float = 0.05, max_probes: int = 10,
                  track: Callable[[Iterable], Iterable] = iter) -> tuple[int, list[Probe]]:
    """(the longest prefix of `steps` found within budget, 0 when none; every probe made).

    `judge(ranks)` → (within budget, worst cosine). The loss grows with the prefix, so the
    search bisects: the cap first (at `strength` of the whole saving), then halves the gap
    until it saves less than `resolution` of the cap's saving or `max_probes` are spent."""
    saved = [0]
    for _, _, saving in steps:
        saved.append(saved[-1] + saving)
    cap = len(steps)
    if strength < 1.0:
        cap = max((n for n in range(len(saved)) if saved[n] <= strength * saved[-1]), default=0)
    probes: list[Probe] = []

    def probe(count: int) -> bool:
        within, worst = judge(ranks_at(steps, count))
        probes.append(Probe(count, saved[count], worst, within))
        logger.debug("factorize: %d steps (%.3g saved): worst cosine %.5f, %s", count, saved[count], worst,
                     "within" if within else "misses")
        return within

    if cap == 0:
        return 0, probes
    low, high = 0, cap
    for _ in track(range(max_probes)):
        if not probes:
            if probe(cap):
                return cap, probes
            continue
        if high - low <= 1 or saved[high] - saved[low] <= resolution * saved[cap]:
            break
        middle = (low + high) // 2
        if probe(middle):
            low = middle
        else:
            high = middle
    return low, probes
