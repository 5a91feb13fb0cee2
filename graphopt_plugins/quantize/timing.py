"""How the pass times whole models: the one place that names the latency backend.

Today `graphopt.bench.compare_latency` (onnxruntime CPU, 1 thread, interleaved); when a
pluggable latency backend is available to passes, only `time_models` changes.
"""

from __future__ import annotations

import onnx

from graphopt.bench import compare_latency

__all__ = ["time_models"]

_SECONDS = 1.5  # per model, at most, spent in the timed runs


def time_models(models: dict[str, onnx.ModelProto], feed: dict) -> dict[str, float]:
    """Median milliseconds of one run of each model on `feed` (one sample), timed interleaved."""
    first = next(iter(models.values()))
    once = compare_latency({"probe": first}, feed, runs=1, warmup=1)["probe"]["median_ms"]
    runs = int(min(max(_SECONDS * 1e3 / max(once, 1e-3), 5), 60))
    timings = compare_latency(models, feed, runs=runs, warmup=2)
    return {label: timing["median_ms"] for label, timing in timings.items()}
