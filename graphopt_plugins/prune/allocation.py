"""Per-layer pruning amounts that meet a global target at least estimated loss.

Each unit (a layer for unstructured pruning, a dependency group for channels) comes with a
loss curve: the estimated relative output error when its `k` least important elements are
removed, for every `k`. A greedy search then spends the global target on the cheapest
increments first (steps of `step` of the unit's size), which is optimal when the curves are
convex, as cumulative sums of sorted importances are.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["allocate", "loss_curve"]


def loss_curve(importance: np.ndarray) -> np.ndarray:
    """`curve[k]`: share of total importance lost by removing the `k` least important elements."""
    ordered = np.sort(np.asarray(importance, dtype=np.float64))
    total = float(ordered.sum()) or 1.0
    return np.concatenate([[0.0], np.cumsum(ordered) / total])


def allocate(curves: list[np.ndarray], target: float, step: float = 0.05, cap: float = 0.9, weights: list[float] | None = None,
             gains: list[float] | None = None, multiple: int = 1) -> list[int]:
    """Elements to remove per unit, whose gains sum to at least `target` (if the caps allow) at least loss.

    `curves[u]` has one entry per count 0..size; `weights[u]` scales unit u's loss (its share of
    the model's output, 1 by default); `gains[u]` is what removing one of its elements saves
    (1 by default: `target` counts elements; MACs per channel make it a compute target, and the
    greedy order loss per MAC saved). Counts are multiples of `multiple`; no unit loses more
    than `cap` of its elements.
    """
    weights = weights or [1.0] * len(curves)
    gains = gains or [1.0] * len(curves)
    counts = [0] * len(curves)
    heap = []

    def push(unit: int) -> None:
        size = len(curves[unit]) - 1
        limit = int(np.floor(cap * size))
        limit -= limit % multiple
        increment = max(1, int(round(step * size)))
        nxt = min(limit, counts[unit] + increment + (-increment) % multiple)
        if nxt > counts[unit] and gains[unit] > 0:
            cost = weights[unit] * (curves[unit][nxt] - curves[unit][counts[unit]]) / ((nxt - counts[unit]) * gains[unit])
            heapq.heappush(heap, (cost, unit, nxt))

    for unit in range(len(curves)):
        push(unit)
    removed = 0.0
    while removed < target and heap:
        _, unit, nxt = heapq.heappop(heap)
        removed += (nxt - counts[unit]) * gains[unit]
        counts[unit] = nxt
        push(unit)
    return counts
