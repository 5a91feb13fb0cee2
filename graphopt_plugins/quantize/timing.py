"""How the pass times whole models: on the run's latency backend (`graphopt.latency`).

`time_models` is the one place `mode=auto` times through; without a backend it uses onnxruntime
on this host (`graphopt.latency.backend("host-ort")`).
"""

from __future__ import annotations

import onnx

from graphopt import latency as graphopt_latency

__all__ = ["time_models"]

_SECONDS = 3.0  # spent in the timed runs of all models together, roughly
_PLAIN = 0.10  # the fastest candidate this much ahead of the next after two rounds: no more rounds


def time_models(models: dict[str, onnx.ModelProto], feed: dict, latency=None) -> dict[str, float]:
    """Median milliseconds of one run of each model on `feed` (one sample), timed interleaved."""
    timer = latency if latency is not None else graphopt_latency.backend("host-ort")
    timings = timer.compare(models, feed, seconds=_SECONDS, rounds=5, purpose="quantize: mode", decided=_plain_winner)
    return {label: timing["median_ms"] for label, timing in timings.items()}


def _plain_winner(medians: list[float]) -> bool:
    """Whether the fastest of the candidates (all but the first, float) leads the next by `_PLAIN`."""
    candidates = sorted(medians[1:])
    return len(candidates) < 2 or candidates[0] < (1 - _PLAIN) * candidates[1]
