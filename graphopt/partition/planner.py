"""Choosing the cuts: a dynamic program over positions in the node order.

The objective is `slowest stage / whole cost + cut_weight × crossing MiB` (every cut's
crossing bytes summed), subject to an optional cap on the weight bytes each stage holds.
For a bound T on the slowest stage, `_fewest_bytes` finds the cuts that move the fewest
bytes with every stage under T, in O(K·n) (a sliding-window minimum: the stages that may end
at a position start in a window that only moves right). Bisection over T then gives, for a
number of bytes, the best balance that moves no more; walking that trade-off front from the
fewest bytes towards the best balance visits every cut set that could minimise the objective
(stopping once the bytes alone outweigh the best found). The result is exact for its own
slowest stage: no cut set as balanced moves fewer bytes (bisection to 1e-10 of the total cost).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math

from graphopt.errors import InputError

__all__ = ["Plan", "plan_cuts", "enumerate_cuts"]

MIB = float(1 << 20)
_BISECTION_STEPS = 80  # a bound, as floats stop halving: 2^-80 of the range is below any cost that matters


@dataclasses.dataclass(frozen=True)
class Plan:
    cuts: tuple[int, ...]  # positions: stage s holds nodes [bounds[s], bounds[s+1])
    stage_costs: tuple[float, ...]
    cut_bytes: tuple[int, ...]  # bytes crossing each cut
    objective: float
    n_nodes: int

    @property
    def bounds(self) -> tuple[int, ...]:
        return (0, *self.cuts, self.n_nodes)


def plan_cuts(
    costs: list[float],
    crossing_bytes: list[int],
    stages: int,
    *,
    cut_weight: float = 0.0,
    weights: list[dict[str, int]] | None = None,
    max_stage_bytes: int | None = None,
) -> Plan:
    """The K−1 cuts minimising `max stage / total + cut_weight × MiB crossing`.

    `costs[i]`: cost of node i; `crossing_bytes[p]`: bytes crossing the cut before node p
    (p = 1..n−1 are the candidate cuts); `weights[i]`: `{initializer: bytes}` node i reads
    (a weight two nodes share is held once per stage). Raises InputError when no cut set
    satisfies the cap or there are fewer nodes than stages.
    """
    n = len(costs)
    if stages < 1:
        raise InputError(f"stages must be at least 1, got {stages}")
    if n < stages:
        raise InputError(f"the model has {n} top-level nodes, fewer than the {stages} stages asked for")
    prefix = [0.0, *itertools.accumulate(max(c, 0.0) for c in costs)]
    total = prefix[-1] or 1.0
    cap_start = _cap_window_starts(weights, max_stage_bytes, n)

    def solve(bound: float):
        return _fewest_bytes(prefix, crossing_bytes, stages, bound, cap_start)

    low = max(max(costs, default=0.0), prefix[-1] / stages)
    loosest = solve(prefix[-1])
    if loosest is None:
        raise InputError(f"no {stages}-stage cut keeps every stage's weights under {max_stage_bytes} bytes")

    def moved(cuts) -> int:
        return sum(crossing_bytes[c] for c in cuts)

    def tightest(most_bytes: float, high: float):
        """The cuts with the smallest slowest stage among those moving at most `most_bytes`."""
        below = low
        best_cuts = solve(high)
        for _ in range(_BISECTION_STEPS):
            if high - below <= 1e-10 * total:
                break
            middle = (below + high) / 2
            found = solve(middle)
            if found is not None and moved(found) <= most_bytes:
                high, best_cuts = middle, found
            else:
                below = middle
        return best_cuts

    if cut_weight == 0:  # balance alone: the tightest bound, then the fewest bytes under it
        return _as_plan(tightest(math.inf, prefix[-1]), prefix, crossing_bytes, total, cut_weight, n)
    # Walk the trade-off front from the fewest bytes towards the best balance: each point is the
    # tightest balance for its bytes; the next allows more bytes for a strictly better balance.
    best, bound, previous = None, prefix[-1], None
    while True:
        found = solve(bound)
        if found is None or (previous is not None and moved(found) <= previous):
            break  # infeasible, or no longer moving along the front (costs below float resolution)
        plan = _as_plan(tightest(moved(found), bound), prefix, crossing_bytes, total, cut_weight, n)
        previous = sum(plan.cut_bytes)
        if best is None or plan.objective < best.objective:
            best = plan
        if cut_weight * sum(plan.cut_bytes) / MIB >= best.objective:
            break  # every later point moves more bytes than the best objective allows
        bound = max(plan.stage_costs) * (1 - 1e-9) - 1e-12 * total
    return best


def enumerate_cuts(
    costs: list[float], crossing_bytes: list[int], stages: int, *, max_stage_cost: float,
    weights: list[dict[str, int]] | None = None, max_stage_bytes: int | None = None,
) -> tuple[int, tuple[int, ...]] | None:
    """Brute force, the reference for tests and benchmarks: (fewest crossing bytes, cuts) over
    every cut set whose slowest stage is ≤ `max_stage_cost` (and within the weight cap)."""
    n = len(costs)
    prefix = [0.0, *itertools.accumulate(max(c, 0.0) for c in costs)]
    slack = 1e-9 * (prefix[-1] or 1.0)
    best = None
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = (0, *cuts, n)
        if any(prefix[b] - prefix[a] > max_stage_cost + slack for a, b in zip(bounds, bounds[1:])):
            continue
        if max_stage_bytes is not None and weights is not None and any(
            _stage_weight_bytes(weights, a, b) > max_stage_bytes for a, b in zip(bounds, bounds[1:])
        ):
            continue
        moved = sum(crossing_bytes[c] for c in cuts)
        if best is None or moved < best[0]:
            best = (moved, cuts)
    return best


def _fewest_bytes(prefix, crossing_bytes, stages, bound, cap_start):
    """Cuts with every stage's cost ≤ bound (and within the cap) moving the fewest bytes, or None."""
    n = len(prefix) - 1
    slack = bound * 1e-12 + 1e-15
    # start[j]: the earliest node a stage ending before node j may begin at.
    start, left = [0] * (n + 1), 0
    for j in range(1, n + 1):
        while prefix[j] - prefix[left] > bound + slack:
            left += 1
        start[j] = max(left, cap_start[j])
    inf = math.inf
    # One stage so far: it can end before node j only if it may start at node 0.
    best = [inf] + [0.0 if start[j] == 0 else inf for j in range(1, n + 1)]
    back = [[0] * (n + 1)]
    for _ in range(1, stages):
        previous, best, choice = best, [inf] * (n + 1), [0] * (n + 1)
        window: collections.deque[int] = collections.deque()
        for j in range(1, n + 1):
            i = j - 1  # the newest possible start: the cut right before node j-1
            if i >= 1 and previous[i] < inf:
                value = previous[i] + crossing_bytes[i]
                while window and previous[window[-1]] + crossing_bytes[window[-1]] >= value:
                    window.pop()
                window.append(i)
            while window and window[0] < start[j]:
                window.popleft()
            if window:
                chosen = window[0]
                best[j], choice[j] = previous[chosen] + crossing_bytes[chosen], chosen
        back.append(choice)
    if best[n] == inf:
        return None
    cuts, position = [], n
    for stage in range(stages - 1, 0, -1):
        position = back[stage][position]
        cuts.append(position)
    return tuple(reversed(cuts))


def _as_plan(cuts, prefix, crossing_bytes, total, cut_weight, n) -> Plan:
    bounds = (0, *cuts, n)
    stage_costs = tuple(prefix[b] - prefix[a] for a, b in zip(bounds, bounds[1:]))
    moved = tuple(int(crossing_bytes[c]) for c in cuts)
    objective = max(stage_costs) / total + cut_weight * sum(moved) / MIB
    return Plan(tuple(cuts), stage_costs, moved, objective, n)


def _cap_window_starts(weights, cap, n) -> list[int]:
    """For each end j, the earliest start i with the weights of nodes [i, j) within the cap."""
    if cap is None or weights is None:
        return [0] * (n + 1)
    for node, read in enumerate(weights):
        if sum(read.values()) > cap:
            raise InputError(f"node {node} alone reads {sum(read.values())} weight bytes, over --max-stage-bytes {cap}")
    starts, uses, held, left = [0] * (n + 1), collections.Counter(), 0, 0
    for j in range(1, n + 1):
        for name, size in weights[j - 1].items():
            if uses[name] == 0:
                held += size
            uses[name] += 1
        while held > cap:
            for name, size in weights[left].items():
                uses[name] -= 1
                if uses[name] == 0:
                    held -= size
            left += 1
        starts[j] = left
    return starts


def _stage_weight_bytes(weights, start, end) -> int:
    held = {}
    for read in weights[start:end]:
        held.update(read)
    return sum(held.values())
