"""Latency measurement shared by `graphopt bench` and the benchmarks: medians, not means.

A 1-thread onnxruntime session stands in for a phone's big core. Machines are noisy, so
models compared with each other are timed *interleaved*: one run of each in turn, round after
round, the order rotating, so a slow spell of the machine hits all of them alike. Each model's
median and spread are reported, with its ratio to the first model.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping

import numpy as np
import onnx

from graphopt.verify.runner import make_session

__all__ = ["measure_latency", "compare_latency"]

Model = onnx.ModelProto | str | os.PathLike


def compare_latency(models: Mapping[str, Model], feeds: Mapping[str, dict[str, np.ndarray]] | dict[str, np.ndarray], *,
                    threads: int = 1, runs: int = 50, warmup: int = 5, optimize: bool = True) -> dict[str, dict]:
    """`{label: timing}` for each model, timed interleaved; `timing["ratio"]` is median / first median.

    `feeds` is one sample (no N axis) shared by all models, or `{label: sample}` per model.
    """
    labels = list(models)
    per_model = all(label in feeds for label in labels) and not any(isinstance(value, np.ndarray) for value in feeds.values())
    sample = {label: feeds[label] if per_model else feeds for label in labels}
    sessions = {label: make_session(models[label], optimize=optimize, threads=threads) for label in labels}
    for label in labels:
        for _ in range(warmup):
            sessions[label].run(None, sample[label])
    times: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(max(runs, 1)):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            sessions[label].run(None, sample[label])
            times[label].append((time.perf_counter() - start) * 1e3)
    results = {label: _timing(times[label], threads) for label in labels}
    baseline = results[labels[0]]["median_ms"]
    for timing in results.values():
        timing["ratio"] = timing["median_ms"] / baseline if baseline else float("nan")
    return results


def measure_latency(model: Model, feeds: dict[str, np.ndarray], *, threads: int = 1, runs: int = 50,
                    warmup: int = 5, optimize: bool = True) -> dict:
    """Median/min/p90 latency (ms) of one inference with `feeds` (one sample, no N axis)."""
    timing = compare_latency({"model": model}, feeds, threads=threads, runs=runs, warmup=warmup, optimize=optimize)["model"]
    del timing["ratio"]
    return timing


def _timing(times: list[float], threads: int) -> dict:
    times = sorted(times)
    return {"median_ms": statistics.median(times), "min_ms": times[0], "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "runs": len(times), "threads": threads}
