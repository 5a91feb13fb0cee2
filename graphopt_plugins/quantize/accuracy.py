"""Accuracy of a candidate plan, and the search that keeps harmful layers in float.

Outputs are compared with the float model's on the evaluation samples, in onnxruntime with
all optimizations on and one thread: the int8 kernels the user will run, not a simulation;
a plan must also pass with optimizations off, as the pipeline's verifier runs it.
A layer's sensitivity is the output SQNR when only that layer is quantized; the most harmful
layers are kept in float, fewest first, until the plan meets the budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from graphopt.verify.metrics import Budget, measure_outputs
from graphopt.verify.unseen import BOUNDARY_SUFFIX

__all__ = ["worst_metrics", "fit_to_budget"]

logger = logging.getLogger(__name__)


def worst_metrics(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], budget: Budget | None,
                  slices=()) -> dict:
    """The lowest worst-sample cosine and SQNR over outputs (and slices of one), and the budget's
    violations: both `{output: array stacked over samples}`, judged per sample as the verifier
    judges them, so a plan that passes here does not fail verification on one sample.

    A plan must also hold on inputs it was not judged on (`graphopt.verify.unseen`): the worst
    a new sample is predicted to give meets the budget, and so does a probability output at its
    decision boundary (`NAME@boundary`)."""
    cosine, sqnr, predicted, violations = 1.0, math.inf, 1.0, []
    measured = measure_outputs(reference, candidate, slices, boundary=True)
    for name, metrics in measured.items():
        cosine, sqnr = min(cosine, metrics["cosine"]), min(sqnr, metrics["sqnr_db"])
        unseen = name + BOUNDARY_SUFFIX not in measured  # a probability output is predicted from its boundary view
        predicted = min(predicted, metrics["cosine_predicted"]) if unseen else predicted
        if budget is not None:
            violations += budget.violations(name, metrics, unseen=unseen)
    return {"cosine": cosine, "sqnr_db": sqnr, "cosine_predicted": predicted, "ok": not violations, "violations": violations}


def fit_to_budget(
    evaluate: Callable[[list[int]], dict],
    candidates: list[int],
    sensitivities: Callable[[list[int]], dict[int, float]],
    at_least: int = 0,
) -> tuple[list[int], dict, dict[int, float], int]:
    """(quantized subset, its metrics, sensitivity per candidate, plans tried).

    `evaluate(subset)` returns `worst_metrics` of the plan quantizing `subset`;
    `sensitivities(candidates)` each one's output SQNR (dB) with only it quantized (the sweep,
    `sensitivity.py`). `at_least` candidates are known to need float
    (a looser search's answer that a stricter check refused): the search grows from there.
    """
    tried = 0
    if not at_least:
        metrics = evaluate(candidates)
        tried = 1
        if metrics["ok"] or not candidates:
            return candidates, metrics, {}, tried
    sensitivity = sensitivities(candidates)
    harmful_first = sorted(candidates, key=lambda index: sensitivity[index])

    def plan(keep_float: int) -> list[int]:
        kept = set(harmful_first[:keep_float])
        return [index for index in candidates if index not in kept]

    # Grow the float set geometrically until the budget holds, then bisect down to the fewest.
    low, step, found = at_least, 1, None
    while found is None and low < len(candidates):
        high = min(at_least + step, len(candidates))
        tried += 1
        result = evaluate(plan(high))
        if result["ok"]:
            found = (high, result)
        else:
            low, step = high, step * 2
    if found is None:
        return [], {"cosine": 1.0, "sqnr_db": math.inf, "ok": True, "violations": []}, sensitivity, tried
    high, best = found
    while high - low > 1:
        middle = (low + high) // 2
        tried += 1
        result = evaluate(plan(middle))
        if result["ok"]:
            high, best = middle, result
        else:
            low = middle
    logger.debug("kept %d of %d layers in float to meet the budget", high, len(candidates))
    return plan(high), best, sensitivity, tried
