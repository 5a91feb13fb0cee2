"""Latency measurement shared by `graphopt bench` and the benchmarks: medians, not means.

A 1-thread onnxruntime session stands in for a phone's big core. Each run is timed alone
after warm-up; the median and the spread are reported, since machines are noisy.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import onnx

from graphopt.verify.runner import make_session

__all__ = ["measure_latency"]


def measure_latency(
    model: onnx.ModelProto | str | os.PathLike,
    feeds: dict[str, np.ndarray],
    *,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    optimize: bool = True,
) -> dict:
    """Median/min/p90 latency (ms) of one inference with `feeds` (one sample, no N axis)."""
    session = make_session(model, optimize=optimize, threads=threads)
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "min_ms": times[0],
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "runs": len(times),
        "threads": threads,
    }
