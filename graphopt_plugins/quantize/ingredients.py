"""The accuracy fixes `quantize` tries before it settles for keeping layers float.

The plan with the pass's own options comes first: every layer int8 where int8 pays on the
latency backend, then the most harmful ones kept float until the budget holds. When it had to
keep layers float for accuracy, the fixes of the ladder are planned in turn, each with the same
budget and the same per-layer timings (timed once): bias correction, adaptive rounding,
percentile calibration. The search stops at the first fix whose plan keeps no layer float for
accuracy, or once the pass has spent `search_seconds` (20 s: with the first plan's 8-40 s on the
corpus, a quantize run stays within a minute). A fix's plan that keeps fewer layers float for
accuracy and clears the budget by half its room is then one more candidate
for the mode choice, which times the candidates against float together and keeps the fastest
(`mode_choice.fastest`), so a fix is kept only when its plan is faster, and every attempt is a
row of `details.mode_trials` (time, cosine, bytes).

Cross-layer equalization is not on the ladder: it changes the model every plan starts from,
so it stays the `equalize` option.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

__all__ = ["LADDER", "harmful", "ingredient_plans"]

# (name, option changes, modes it applies to), in the order tried: on PP-OCRv4 det adaptive rounding kept
# the most layers int8 and percentile calibration the fewest.
LADDER = (
    ("bias_correction", {"bias_correction": True}, ("static",)),
    ("adaptive_rounding", {"rounding": "adaptive"}, ("static", "dynamic")),
    ("percentile", {"calibrate": "percentile"}, ("static",)),
)


def harmful(stats: dict) -> int:
    """How many layers a plan kept float because they broke the budget."""
    return sum(1 for row in stats.get("layers", ()) if row["decision"] != "quantized" and "too harmful" in row["why"])


def ingredient_plans(mode: str, options, first: dict, plan: Callable, started: float, budget) -> tuple[dict[str, tuple], list[dict]]:
    """({"MODE+FIX": plan(options with FIX)} in ladder order, the fixes not kept and why).

    `plan(options)` returns (planner, chosen, stats); `first` is the stats of the plan with the
    pass's own options; `started`: when the pass began (`time.perf_counter()`). A fix's plan is
    a candidate only when it keeps fewer layers float for accuracy than the first plan and
    clears `budget` by half its room: a fix is an option on top, and a plan at the edge of its
    budget on the judged samples falls below it on the next inputs (the orientation classifier:
    0.9923 judged, 0.9889 unseen, where the first plan's 0.9966 held)."""
    margin = budget.tightened(0.5)
    found, untried = {}, []
    if not options.auto or not harmful(first):
        return found, untried
    for name, change, modes in LADDER:
        if mode not in modes or all(getattr(options, key) == value for key, value in change.items()):
            continue
        if time.perf_counter() - started > options.search_seconds:
            untried.append({"mode": f"{mode}+{name}", "why": f"not tried: the pass had spent search_seconds={options.search_seconds:g}"})
            continue
        planner, chosen, stats = plan(dataclasses.replace(options, **change))
        label = f"{mode}+{name}"
        if harmful(stats) >= harmful(first):
            untried.append({"mode": label, "quantized": len(chosen), "cosine": stats.get("cosine"),
                            "why": f"kept as many layers float for accuracy ({harmful(stats)})"})
            continue
        if (margin.cos is not None and stats["cosine"] < margin.cos) or (margin.sqnr is not None and stats["sqnr_db"] < margin.sqnr):
            untried.append({"mode": label, "quantized": len(chosen), "cosine": stats.get("cosine"),
                            "why": f"within the budget but not by half its room ({margin.describe()})"})
            continue
        found[label] = (planner, chosen, stats)
        if chosen and not harmful(stats):
            break
    return found, untried
