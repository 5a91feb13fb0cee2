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


def allocate(curves: list[np.ndarray], target: int, step: float = 0.05, cap: float = 0.9, weights: list[float] | None = None) -> list[int]:
    """Elements to remove per unit, summing to at least `target` (if the caps allow) at least loss.

    `curves[u]` has one entry per count 0..size; `weights[u]` scales unit u's loss (its share of
    the model's output, 1 by default). No unit loses more than `cap` of its elements.
    """
    weights = weights or [1.0] * len(curves)
    counts = [0] * len(curves)
    heap = []

    def push(unit: int) -> None:
        size = len(curves[unit]) - 1
        limit = int(np.floor(cap * size))
        nxt = min(limit, counts[unit] + max(1, int(round(step * size))))
        if nxt > counts[unit]:
            cost = weights[unit] * (curves[unit][nxt] - curves[unit][counts[unit]]) / (nxt - counts[unit])
            heapq.heappush(heap, (cost, unit, nxt))

    for unit in range(len(curves)):
        push(unit)
    removed = 0
    while removed < target and heap:
        _, unit, nxt = heapq.heappop(heap)
        removed += nxt - counts[unit]
        counts[unit] = nxt
        push(unit)
    return counts
