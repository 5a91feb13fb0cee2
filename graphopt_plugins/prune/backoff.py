"""Budget back-off: the largest pruning strength whose outputs stay within the accuracy budget.

A pruning at `strength` s scales the requested amount (sparsity, channel ratio, or for n:m the
share of layers given the pattern) by s. Strength 1 is tried first; if it misses the budget
on the fitting data, s is bisected in (0, 1) for `steps` more tries, keeping the largest s
that held. Each try prunes a fresh copy of the model, so a miss leaves nothing behind, and the
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
                "changed": bool(self.stats.get("changed"))}


def search_strength(prune_copy: Callable[[float], tuple[gs.Graph, dict]], template: onnx.ModelProto,
                    samples: dict[str, np.ndarray], budget: Budget, steps: int, track=iter,
                    slices=()) -> tuple[Attempt | None, list[Attempt]]:
    """(the strongest attempt within `budget`, or None; every attempt made, in order).

    `prune_copy(strength)` prunes a fresh copy of `template`'s graph and returns it with the
    pass's stats (`stats["changed"]` false means it found nothing to do at that strength).
    Judged per sample, per output and per slice of one (`slices`, `PassContext.output_slices`).
    """
    reference = stacked_outputs(template, samples)

    def attempt(strength: float) -> Attempt:
        graph, stats = prune_copy(strength)
        if not stats.get("changed"):
            return Attempt(strength, stats, {}, [], graph)
        outputs = stacked_outputs(convert.export_model(graph, template), samples)
        metrics = measure_outputs(reference, outputs, slices)
        violations = [text for name, values in metrics.items() for text in budget.violations(name, values)]
        return Attempt(strength, stats, metrics, violations, graph)

    tried = []
    low, high, best = 0.0, 1.0, None
    for index in track(range(steps + 1)):
        strength = 1.0 if index == 0 else (low + high) / 2
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


def adopt_graph(graph: gs.Graph, winner: gs.Graph) -> None:
    """Moves `winner`'s content into `graph` (the pass must change the graph it was given)."""
    graph.nodes = winner.nodes
    graph.inputs = winner.inputs
    graph.outputs = winner.outputs
    graph.functions = winner.functions
