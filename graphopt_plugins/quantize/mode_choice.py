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

from graphopt_plugins.quantize.targets import Target, find_targets
from graphopt_plugins.quantize.timing import time_models

__all__ = ["targets_for", "candidate_modes", "fastest", "trial_row"]

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


def fastest(float_model: onnx.ModelProto, candidates: dict[str, onnx.ModelProto], feed: dict, latency=None
            ) -> tuple[str, dict[str, dict]]:
    """(the mode whose model ran fastest, per mode its time and float's, timed together on `latency`)."""
    times = time_models({"float": float_model, **candidates}, feed, latency)
    rows = {mode: {"ms": round(times[mode], 3), "float_ms": round(times["float"], 3),
                   "ratio": round(times[mode] / times["float"], 3), "bytes": candidates[mode].ByteSize()} for mode in candidates}
    return min(candidates, key=lambda mode: times[mode]), rows


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
