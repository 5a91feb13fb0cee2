"""The sensitivity sweep: each unit quantized alone, the worst output SQNR over a few samples.

Candidates are built here, in order, on the calling thread (graphsurgeon graphs are not shared
between threads); their onnxruntime sessions run on a few worker threads, one ORT thread each,
so a machine with spare cores measures several candidates side by side. Each session runs the
same samples at one thread whichever worker holds it, so the figures do not depend on the
number of workers; at most `workers + 1` candidates are held at a time.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from graphopt.verify.runner import stacked_outputs
from graphopt_plugins.quantize.accuracy import worst_metrics

__all__ = ["sweep", "default_workers"]

_MAX_WORKERS = 4  # beyond this the sweep waits on building candidates, not on running them


def default_workers() -> int:
    """One worker per core this process may run on, at most `_MAX_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cores))


def sweep(units: list[int], build: Callable[[int], onnx.ModelProto], samples: dict[str, np.ndarray],
          reference: dict[str, np.ndarray], workers: int,
          track: Callable[[Iterable, str, int], Iterable] = lambda items, desc, total: items) -> dict[int, float]:
    """{unit: worst output SQNR (dB) on `samples` of `build(unit)` against `reference`}, in `units`' order."""
    if workers <= 1:
        return {unit: _sqnr(build(unit), samples, reference) for unit in track(units, "quantize: layer sensitivity", len(units))}
    found: dict[int, float] = {}
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graphopt-sensitivity") as pool:
        for unit in track(units, "quantize: layer sensitivity", len(units)):
            pending.append((unit, pool.submit(_sqnr, build(unit), samples, reference)))
            while len(pending) > workers:
                done, future = pending.popleft()
                found[done] = future.result()
        while pending:
            done, future = pending.popleft()
            found[done] = future.result()
    return {unit: found[unit] for unit in units}


def _sqnr(model: onnx.ModelProto, samples: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    return worst_metrics(reference, stacked_outputs(model, samples, optimize=True), None)["sqnr_db"]
