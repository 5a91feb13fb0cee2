"""Budget back-off: the largest pruning strength whose outputs stay within the accuracy budget.

A pruning at `strength` s scales the requested amount (sparsity, channel ratio, or for n:m the
share of layers given the pattern) by s. Strength 1 is tried first; if it misses the budget
on the fitting data, s is searched in (0, 1) for `steps` more tries (the next try where the
last one's cosine loss, growing as s², meets the budget; else the midpoint), keeping the
largest s that held. Each try prunes a fresh copy of the model, so a miss leaves nothing behind, and the
winner's graph is moved into the pass's graph. If nothing holds, the graph stays unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import convert
from graphopt.verify.metrics import Budget, measure_outputs
from graphopt.verify.unseen import without_boundary_views
from graphopt.verify.runner import stacked_outputs

__all__ = ["Attempt", "search_strength", "adopt_graph"]


@dataclasses.dataclass
class Attempt:
    strength: float
    stats: dict
    metrics: dict[str, dict]  # per output, against the unpruned model on the fitting data
    violations: list[str]
    graph: gs.Graph | None = None

    def summary(self) -> dict:
        worst = min((m["cosine"] for m in self.metrics.values()), default=1.0)
        return {"strength": round(self.strength, 4), "worst_cosine": round(worst, 6), "within_budget": bool(self.stats.get("changed")) and not self.violations,
                "changed": bool(self.stats.get("changed")), **({"refit": self.stats["reconstructed"]} if "reconstructed" in self.stats else {})}


def search_strength(prune_copy: Callable[[float], tuple[gs.Graph, dict]], template: onnx.ModelProto,
                    samples: dict[str, np.ndarray], budget: Budget, steps: int, track=iter,
                    slices=(), start: float = 1.0, floor: float = 0.0) -> tuple[Attempt | None, list[Attempt]]:
    """(the strongest attempt within `budget`, or None; every attempt made, in order).

    `prune_copy(strength)` prunes a fresh copy of `template`'s graph and returns it with the
    pass's stats (`stats["changed"]` false means it found nothing to do at that strength).
    Judged per sample, per output and per slice of one (`slices`, `PassContext.output_slices`).
    `start` is the first strength tried, the top of the range searched below it; `floor` its
    bottom (a strength known to hold some other way).
    """
    reference = stacked_outputs(template, samples)

    def attempt(strength: float) -> Attempt:
        graph, stats = prune_copy(strength)
        if not stats.get("changed"):
            return Attempt(strength, stats, {}, [], graph)
        outputs = stacked_outputs(convert.export_model(graph, template), samples)
        # a probability output judged at its decision boundary too (verify/unseen.py)
        judged = measure_outputs(reference, outputs, slices, boundary=True)
        violations = [text for name, values in judged.items() for text in budget.violations(name, values)]
        metrics = without_boundary_views(judged)
        return Attempt(strength, stats, metrics, violations, graph)

    tried = []
    low, high, best = floor, start, None
    for index in track(range(steps + 1)):
        strength = start if index == 0 else _next_strength(low, high, tried[-1], budget)
        result = attempt(strength)
        tried.append(result)
        if not result.stats.get("changed"):
            if index == 0:
                break  # nothing to prune at all
            low = strength  # nothing pruned this weakly: a stronger try may still fit
            continue
        if result.violations:
            high = strength
        else:
            low, best = strength, result
            if index == 0:
                break
    for result in tried:
        if result is not best:
            result.graph = None  # release the copies that lost
    return best, tried


def _next_strength(low: float, high: float, last: Attempt, budget: Budget) -> float:
    """The next strength between `low` (within) and `high` (missed): where a cosine loss growing
    as the strength squared (a small perturbation's) meets the budget, from the last attempt's
    loss, kept at least a sixth of the gap from either end; the midpoint without a cosine budget.

    Bisection from 1 spends its tries halving towards a budget that a model missing at 0.93
    only meets at a few percent (PP-OCRv4 det: six tries, 0.5 … 0.0625); the estimate gets
    there in one or two."""
    middle = (low + high) / 2
    worst = min((m["cosine"] for m in last.metrics.values()), default=None)
    if budget.cos is None or worst is None or not last.stats.get("changed"):
        return middle
    loss, allowed = 1.0 - worst, 0.8 * (1.0 - budget.cos)  # aim a little inside the budget
    if loss <= 0.0:
        return middle
    guess = last.strength * (allowed / loss) ** 0.5
    margin = (high - low) / 6
    return float(min(max(guess, low + margin), high - margin))


def adopt_graph(graph: gs.Graph, winner: gs.Graph) -> None:
    """Moves `winner`'s content into `graph` (the pass must change the graph it was given)."""
    graph.nodes = winner.nodes
    graph.inputs = winner.inputs
    graph.outputs = winner.outputs
    graph.functions = winner.functions
