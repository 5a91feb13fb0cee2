"""Never slower: how a lossy pass's result runs against its input, for passes that back off on it.

A factorized or pruned model does fewer MACs but can run slower (two thin MatMuls cost more
than one wide one at small sizes; an OCR recognizer came back at 1.063×). A lossy pass times
its result against its input here and weakens or drops a result that is slower.

The rule is strict: a lossy pass trades accuracy for speed, so its result is kept only when it
is measurably faster than its input. A first timing more than 3% from 1.0 decides; one closer
is settled by three interleaved timings beside a copy of the input, and the result must beat
the input by more than the input's own spread: a median ratio of 1.0 less that noise, at most.
(A lossless rewrite instead goes back only when slower beyond noise, `latency.never_slower`.)

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
# within this of 1.0 is timed three times more, beside a copy of the input, and those decide.
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
    """`{"latency_ratio": r, "noise": n, "reference_ms": ms, "timings": k}` when `candidate` is
    not measurably faster than `reference` on the first of `samples` (`{input: (N, *shape)}`),
    else None (also when the reference runs under `floor_ms` or there is no sample to time on).

    A first ratio more than `_UNSETTLED` from 1.0 decides at once. One closer is timed
    `_TIMINGS` times beside a second copy of the reference, and the candidate is faster only
    when the median ratio is at most 1.0 less the median noise (the copy's distance from 1.0):
    a result as fast as its input, within what the input shows against itself, is not faster.
    """
    if not samples:
        return None
    backend = backend if backend is not None else latency.backend("host-ort")
    inputs = {value.name for value in reference.graph.input}
    sample = {name: np.asarray(array)[0] for name, array in samples.items() if name in inputs}
    measured = latency_ratio(reference, candidate, sample, backend, seconds)
    if measured is None or measured[1] < floor_ms:
        return None
    ratio, reference_ms = measured
    ratios, noises = [ratio], [0.0]
    if abs(ratio - 1.0) <= _UNSETTLED:
        timings = [_with_noise(reference, candidate, sample, backend, seconds) for _ in range(_TIMINGS)]
        ratios, noises = [t[0] for t in timings], [t[1] for t in timings]
    ratio, noise = statistics.median(ratios), statistics.median(noises)
    logger.debug("latency: %.3f× of %.2f ms, noise ±%.3f (median of %d timings: %s)", ratio, reference_ms, noise,
                 len(ratios), ", ".join(f"{r:.3f}" for r in ratios))
    if ratio <= 1.0 - noise:
        return None
    return {"latency_ratio": round(ratio, 3), "noise": round(noise, 3), "reference_ms": round(reference_ms, 3),
            "timings": len(ratios)}


def _with_noise(reference, candidate, sample, backend, seconds: float) -> tuple[float, float]:
    """(candidate / reference, |reference's copy / reference - 1|), the three timed interleaved."""
    timing = backend.compare({"reference": reference, "candidate": candidate, "reference_again": reference}, dict(sample),
                             seconds=seconds * 1.5, rounds=5, purpose="lossy pass: never slower")
    return float(timing["candidate"]["ratio"]), abs(float(timing["reference_again"]["ratio"]) - 1.0)
