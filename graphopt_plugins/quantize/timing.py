"""How the pass times whole models: on the run's latency backend (`graphopt.latency`).

`time_models` is the one place `mode=auto` times through; without a backend it uses onnxruntime
on this host (`graphopt.latency.backend("host-ort")`).
"""

from __future__ import annotations

import onnx

from graphopt import latency as graphopt_latency

__all__ = ["time_models"]

_SECONDS = 3.0  # spent in the timed runs of all models together, roughly


def time_models(models: dict[str, onnx.ModelProto], feed: dict, latency=None) -> dict[str, float]:
    """Median milliseconds of one run of each model on `feed` (one sample), timed interleaved."""
    timer = latency if latency is not None else graphopt_latency.backend("host-ort")
    timings = timer.compare(models, feed, seconds=_SECONDS, rounds=5, purpose="quantize: mode")
    return {label: timing["median_ms"] for label, timing in timings.items()}
