"""Never slower: how a lossy pass's result runs against its input, for passes that back off on it.

A factorized or pruned model does fewer MACs but can run slower (two thin MatMuls cost more
than one wide one at small sizes; an OCR recognizer came back at 1.063×). A lossy pass times
its result against its input here and weakens or drops a result that is slower.

Timing goes through the run's latency backend (`graphopt.latency.of(ctx)`, `--latency-on`;
onnxruntime on the host by default); a backend that measures nothing (`none`) judges nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx

from graphopt import latency

__all__ = ["latency_ratio", "slower", "TIMING_FLOOR_MS"]

logger = logging.getLogger(__name__)

# Below this per-run time the timing is the scheduler's noise, not the model's: not judged.
TIMING_FLOOR_MS = 1.0
# Interleaved medians on a busy 2-core machine move by a few percent run to run; a result is
# called slower only beyond this.
_NOISE = 0.02


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
    """`{"latency_ratio": r, "reference_ms": ms}` when `candidate` runs slower than `reference`
    beyond noise on the first of `samples` (`{input: (N, *shape)}`), else None (also when the
    reference runs under `floor_ms` or there is no sample to time on)."""
    if not samples:
        return None
    inputs = {value.name for value in reference.graph.input}
    sample = {name: np.asarray(array)[0] for name, array in samples.items() if name in inputs}
    measured = latency_ratio(reference, candidate, sample, backend, seconds)
    if measured is None:
        return None
    ratio, reference_ms = measured
    logger.debug("latency: %.3f× of %.2f ms", ratio, reference_ms)
    if reference_ms < floor_ms or ratio <= 1.0 + _NOISE:
        return None
    return {"latency_ratio": round(ratio, 3), "reference_ms": round(reference_ms, 3)}
