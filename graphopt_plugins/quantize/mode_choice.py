"""`mode=auto`: which quantization mode pays on this model, decided by timing the candidates.

Static QDQ runs QLinearConv / QLinearMatMul with activation scales fixed at calibration; dynamic
quantizes a MatMul's input on every call (DynamicQuantizeMatMul) and has no int8 Conv. Which is
faster depends on the model and the runtime: on this CPU, convolutional models gain most from
static QDQ, transformer encoders from dynamic MatMuls. So `auto` plans every applicable mode
under the same budget and keeps the fastest, timed against the float model, interleaved.
Weight-only is not a mode `auto` tries: the layers a plan keeps float store their weights int8
on their own (`stored_weights.py`), and the accuracy fixes join the candidates (`ingredients.py`).
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from graphopt.latency.never_slower import DEFAULT_MARGIN
from graphopt_plugins.quantize.targets import Target, find_targets
from graphopt_plugins.quantize.timing import time_models

__all__ = ["targets_for", "candidate_modes", "choose_mode", "fastest", "trial_row"]

_DYNAMIC_SHARE = 0.5  # dynamic is planned when its MatMuls/Gemms hold at least this share of the MACs


def targets_for(graph: gs.Graph, options, mode: str) -> tuple[list[Target], list[dict]]:
    """The layers `mode` can quantize, and the skipped ones with a reason."""
    op_types = [op for op in options.op_types if mode != "dynamic" or op in ("MatMul", "Gemm")]
    targets, skipped = find_targets(graph, op_types, options.include, options.exclude)
    if mode == "dynamic":  # MatMulInteger's per-column zero point needs a 2-D weight
        skipped += [{"node": t.name, "op": t.op, "reason": "dynamic mode needs a 2-D weight"} for t in targets if len(t.weight_shape) != 2]
        targets = [t for t in targets if len(t.weight_shape) == 2]
    return targets, skipped


def candidate_modes(graph: gs.Graph, options, measures: bool = True) -> list[str]:
    """The modes `auto` tries: static always, dynamic when some MatMul/Gemm qualifies.

    With `latency=off` (a result that depends on the data only), or a latency backend that times
    nothing (`--latency-on none`), nothing is timed: dynamic for a model without convolutions (a
    transformer), else static.
    """
    dynamic_targets = targets_for(graph, options, "dynamic")[0]
    static_targets = targets_for(graph, options, "static")[0]
    convolutions = any(t.op in ("Conv", "ConvTranspose") for t in static_targets)
    if options.latency == "off" or not measures:
        return ["dynamic"] if dynamic_targets and not convolutions else ["static"]
    # Dynamic leaves convolutions float: where they hold most of the work it cannot win, so it is
    # not worth planning (a CNN's classifier Gemm). Unknown sizes (0 MACs) do not rule it out.
    total = sum(t.macs for t in static_targets)
    share = sum(t.macs for t in dynamic_targets) / total if total else 1.0
    return ["static", "dynamic"] if dynamic_targets and share >= _DYNAMIC_SHARE else ["static"]


def choose_mode(float_model: onnx.ModelProto, plans: dict[str, tuple], latency, timed: bool) -> tuple[str, dict[str, dict]]:
    """(the mode to keep, per mode its timing when timed) among `plans`, `{mode: (planner, chosen
    layers, stats)}` of the modes whose plan does something.

    Plans that quantize no compute all run float kernels (their int8 weights are held to never
    slower by stored_weights.py): timing them apart measures noise, so the smallest wins. Else,
    `timed`, the fastest (`fastest`); untimed, the plan with the most int8 layers."""
    computing = any(chosen for _, chosen, _ in plans.values())
    if len(plans) > 1 and computing and timed:
        feed = next(iter(plans.values()))[0].timing_feed()
        return fastest(float_model, {mode: planner.build(chosen) for mode, (planner, chosen, _) in plans.items()}, feed, latency)
    if len(plans) > 1 and not computing:
        return min(plans, key=lambda mode: plans[mode][0].build(plans[mode][1]).ByteSize()), {}
    return max(plans, key=lambda mode: len(plans[mode][1])), {}


def fastest(float_model: onnx.ModelProto, candidates: dict[str, onnx.ModelProto], feed: dict, latency=None
            ) -> tuple[str, dict[str, dict]]:
    """(the mode whose model ran fastest, per mode its time and float's, timed together on `latency`).

    Modes within `DEFAULT_MARGIN` of the fastest time are one speed (never_slower's margin): the
    smallest of them wins. Timed 0.244 against 0.248 ms, a MobileNetV3's dynamic plan (1 layer
    stored int8, 139 kB) had beaten its static one (17 layers, 58 kB) on noise alone."""
    times = time_models({"float": float_model, **candidates}, feed, latency)
    rows = {mode: {"ms": round(times[mode], 3), "float_ms": round(times["float"], 3),
                   "ratio": round(times[mode] / times["float"], 3), "bytes": candidates[mode].ByteSize()} for mode in candidates}
    quickest = min(times[mode] for mode in candidates)
    tied = [mode for mode in candidates if times[mode] <= quickest * (1.0 + DEFAULT_MARGIN)]
    return min(tied, key=lambda mode: (rows[mode]["bytes"], times[mode])), rows


def trial_row(mode: str, stats: dict, timing: dict | None) -> dict:
    """One row of the report's `mode_trials`: what the mode's plan kept, its accuracy, its time."""
    row = {"mode": mode, "quantized": stats.get("quantized", 0), "stored_int8": stats.get("stored_int8", 0), "cosine": stats.get("cosine"), "sqnr_db": stats.get("sqnr_db")}
    guard = stats.get("latency") or {}
    if timing is not None:
        row.update(timing)
    elif "quantized_ms" in guard:
        row.update(ms=guard["quantized_ms"], float_ms=guard["float_ms"], ratio=round(guard["quantized_ms"] / guard["float_ms"], 3))
    if not row["quantized"] and not row["stored_int8"]:
        row["why"] = stats.get("reason", "every layer kept float")
    return row
