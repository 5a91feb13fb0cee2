"""Never slower: how a lossy pass's result runs against its input, for passes that back off on it.

A factorized or pruned model does fewer MACs but can run slower (two thin MatMuls cost more
than one wide one at small sizes; an OCR recognizer came back at 1.063×). A lossy pass times
its result against its input here and weakens or drops a result that is slower.

The one function that times (`latency_ratio`) is the switch point to the pluggable latency
backends (`graphopt/latency/`, `ctx.latency`) when they land: today it is onnxruntime on the
host at one thread, through `graphopt.bench.compare_latency` (interleaved medians).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx

from graphopt.bench import compare_latency

__all__ = ["latency_ratio", "slower", "TIMING_FLOOR_MS"]

logger = logging.getLogger(__name__)

# Below this per-run time the timing is the scheduler's noise, not the model's: not judged.
TIMING_FLOOR_MS = 1.0
# Interleaved medians on a busy 2-core machine move by a few percent run to run; a result is
# called slower only beyond this.
_NOISE = 0.02


def latency_ratio(reference: onnx.ModelProto, candidate: onnx.ModelProto, sample: Mapping[str, np.ndarray],
                  runs: int = 20) -> tuple[float, float]:
    """(candidate median / reference median, reference median ms): one sample, 1 thread, interleaved."""
    timing = compare_latency({"reference": reference, "candidate": candidate}, dict(sample), runs=runs, warmup=3)
    return float(timing["candidate"]["ratio"]), float(timing["reference"]["median_ms"])


def slower(reference: onnx.ModelProto, candidate: onnx.ModelProto, samples: Mapping[str, np.ndarray] | None,
           runs: int = 20, floor_ms: float = TIMING_FLOOR_MS) -> dict | None:
    """`{"latency_ratio": r, "reference_ms": ms}` when `candidate` runs slower than `reference`
    beyond noise on the first of `samples` (`{input: (N, *shape)}`), else None (also when the
    reference runs under `floor_ms` or there is no sample to time on)."""
    if not samples:
        return None
    inputs = {value.name for value in reference.graph.input}
    sample = {name: np.asarray(array)[0] for name, array in samples.items() if name in inputs}
    ratio, reference_ms = latency_ratio(reference, candidate, sample, runs)
    logger.debug("latency: %.3f× of %.2f ms", ratio, reference_ms)
    if reference_ms < floor_ms or ratio <= 1.0 + _NOISE:
        return None
    return {"latency_ratio": round(ratio, 3), "reference_ms": round(reference_ms, 3)}
