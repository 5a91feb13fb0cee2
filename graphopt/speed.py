"""Never slower: how a lossy pass's result runs against its input, for passes that back off on it.

A factorized or pruned model does fewer MACs but can run slower (two thin MatMuls cost more
than one wide one at small sizes; an OCR recognizer came back at 1.063×). A lossy pass times
its result against its input here and weakens or drops a result that is slower.

The rule is strict: a lossy pass trades accuracy for speed or size, so a result whose median
ratio is above 1.0 is not kept, however small the excess; there is no noise allowance (a
lossless rewrite gets one, `latency.never_slower`). A first timing close to 1.0 is settled by
the median of three interleaved timings, not by one.

Timing goes through the run's latency backend (`graphopt.latency.of(ctx)`, `--latency-on`;
onnxruntime on the host by default); a backend that measures nothing (`none`) judges nothing.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping

import numpy as np
import onnx

from graphopt import latency

__all__ = ["latency_ratio", "slower", "TIMING_FLOOR_MS"]

logger = logging.getLogger(__name__)

# Below this per-run time the timing is the scheduler's noise, not the model's: not judged.
TIMING_FLOOR_MS = 1.0
# Interleaved medians on a busy 2-core machine move by a few percent run to run: a first ratio
# within this of 1.0 is timed twice more and the median of the three decides.
_UNSETTLED = 0.03
_TIMINGS = 3


def latency_ratio(reference: onnx.ModelProto, candidate: onnx.ModelProto, sample: Mapping[str, np.ndarray],
                  backend=None, seconds: float = 1.0) -> tuple[float, float] | None:
    """(candidate median / reference median, reference median ms) on `backend` (default
    host-ort), interleaved, one sample; None when the backend measures nothing."""
    backend = backend if backend is not None else latency.backend("host-ort")
    if not backend.measures:
        return None
    timing = backend.compare({"reference": reference, "candidate": candidate}, dict(sample), seconds=seconds,
                             rounds=5, purpose="lossy pass: never slower")
    if timing["candidate"]["ratio"] is None or timing["reference"]["median_ms"] is None:
        return None
    return float(timing["candidate"]["ratio"]), float(timing["reference"]["median_ms"])


def slower(reference: onnx.ModelProto, candidate: onnx.ModelProto, samples: Mapping[str, np.ndarray] | None,
           backend=None, floor_ms: float = TIMING_FLOOR_MS, seconds: float = 1.0) -> dict | None:
    """`{"latency_ratio": r, "reference_ms": ms, "timings": n}` when `candidate` is not measurably
    faster than `reference` (median ratio above 1.0 on the first of `samples`, `{input: (N,
    *shape)}`), else None (also when the reference runs under `floor_ms` or there is no sample
    to time on)."""
    if not samples:
        return None
    inputs = {value.name for value in reference.graph.input}
    sample = {name: np.asarray(array)[0] for name, array in samples.items() if name in inputs}
    measured = latency_ratio(reference, candidate, sample, backend, seconds)
    if measured is None:
        return None
    ratios, reference_ms = [measured[0]], measured[1]
    if reference_ms < floor_ms:
        return None
    while abs(ratios[0] - 1.0) <= _UNSETTLED and len(ratios) < _TIMINGS:
        again = latency_ratio(reference, candidate, sample, backend, seconds)
        if again is None:
            break
        ratios.append(again[0])
    ratio = statistics.median(ratios)
    logger.debug("latency: %.3f× of %.2f ms (median of %d timings: %s)", ratio, reference_ms, len(ratios),
                 ", ".join(f"{r:.3f}" for r in ratios))
    if ratio <= 1.0:
        return None
    return {"latency_ratio": round(ratio, 3), "reference_ms": round(reference_ms, 3), "timings": len(ratios)}
