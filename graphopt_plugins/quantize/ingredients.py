"""The accuracy fixes `quantize` tries before it settles for keeping layers float.

The plan with the pass's own options comes first: every layer int8 where int8 pays on the
latency backend, then the most harmful ones kept float until the budget holds. When it had to
keep layers float for accuracy, the fixes of the ladder are planned in turn, each with the same
budget and the same per-layer timings (timed once): bias correction, adaptive rounding,
percentile calibration. The search stops at the first fix whose plan keeps no layer float for
accuracy, or once the pass has spent `search_seconds` (20 s: with the first plan's 8-40 s on the
corpus, a quantize run stays within a minute). Every plan is then one more candidate
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


def ingredient_plans(mode: str, options, first: dict, plan: Callable, started: float) -> tuple[dict[str, tuple], list[dict]]:
    """({"MODE+FIX": plan(options with FIX)} in ladder order, the fixes not tried and why).

    `plan(options)` returns (planner, chosen, stats); `first` is the stats of the plan with the
    pass's own options; `started`: when the pass began (`time.perf_counter()`)."""
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
        found[f"{mode}+{name}"] = (planner, chosen, stats)
        if chosen and not harmful(stats):
            break
    return found, untried
