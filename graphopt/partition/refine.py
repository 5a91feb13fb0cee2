"""Balancing by what the stages really take: the plan re-made from measured stage latencies.

Per-node costs come from a profile with graph optimizations off (the only setting where each
kernel is one of our nodes), but a worker runs its stage with them on: a BatchNorm folded into
its Conv costs nothing there, an attention block fused into one kernel costs less than its
parts. So the planned cut is extracted, each stage is timed as a worker runs it (1 thread,
optimizations on), the nodes of each stage are rescaled so their sum is that stage's measured
latency, and the cuts are planned again, for a few rounds or until the cuts repeat. The round
whose measured stages score best (the planner's objective on measured latencies) wins.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx

from graphopt.partition.costs import stage_latencies
from graphopt.partition.cuts import CutPlan
from graphopt.partition.planner import MIB, Plan, plan_cuts
from graphopt.partition.stages import extract_stages

__all__ = ["Measured", "plan_by_measured_stages"]

logger = logging.getLogger(__name__)

_ROUNDS = 4


@dataclasses.dataclass
class Measured:
    plan: Plan  # stage_costs: measured seconds of each stage
    stages: list[onnx.ModelProto]
    node_costs: list[float]  # the calibrated node costs this plan was made from


def plan_by_measured_stages(
    source: onnx.ModelProto, cut_plan: CutPlan, costs: list[float], cut_bytes: list[int], stages: int,
    sample: dict[str, np.ndarray], *, cut_weight: float, weights, max_stage_bytes: int | None, rounds: int = _ROUNDS,
) -> Measured:
    best, best_score, seen = None, None, set()
    plan = plan_cuts(costs, cut_bytes, stages, cut_weight=cut_weight, weights=weights, max_stage_bytes=max_stage_bytes)
    for round_index in range(rounds):
        seen.add(plan.cuts)
        models = extract_stages(source, cut_plan, plan.bounds)
        measured = stage_latencies(models, sample)
        score = max(measured) / (sum(measured) or 1.0) + cut_weight * sum(plan.cut_bytes) / MIB
        logger.info("round %d: cuts %s, measured stages %s s", round_index, plan.cuts, [round(m, 6) for m in measured])
        if best_score is None or score < best_score:
            best, best_score = Measured(dataclasses.replace(plan, stage_costs=tuple(measured)), models, list(costs)), score
        costs = _calibrated(costs, plan.bounds, measured)
        plan = plan_cuts(costs, cut_bytes, stages, cut_weight=cut_weight, weights=weights, max_stage_bytes=max_stage_bytes)
        if plan.cuts in seen:
            break
    return best


def _calibrated(costs: list[float], bounds: tuple[int, ...], measured: list[float]) -> list[float]:
    """Node costs rescaled per stage so each stage's sum is its measured latency."""
    calibrated = list(costs)
    for index, (start, end) in enumerate(zip(bounds, bounds[1:])):
        planned = sum(costs[start:end])
        for node in range(start, end):
            calibrated[node] = costs[node] * measured[index] / planned if planned > 0 else measured[index] / (end - start)
    return calibrated
