"""What a lossy result is likely to do on inputs it was not judged on.

A plan searched to the edge of its budget on N samples meets it on those N; on new inputs it
misses. Two reasons, each with its own guard:

- **Spread.** The per-sample error varies by an order of magnitude between inputs: the worst of
  16 judged samples is not the worst of the next 32. PP-OCRv4 rec's int8 plan judged at worst
  cosine 0.9930 gave 0.946 on 32 new text crops. `predicted_worst` fits a normal to
  log10(1 − cosine) (SQNR is already a log) over the judged samples and returns the bound one
  new input keeps with 99.5% confidence under that fit (a prediction bound: the fit's own
  uncertainty from few samples widens it). A
  probability output is predicted from its boundary view (below) only: its plain per-sample
  errors are bimodal, 1e-9 where the softmax is saturated and 1e-3 elsewhere, a spread that
  says nothing about the tail; at the boundary every sample is a near-tie.
- **Saturation.** A classifier's calibration inputs are mostly confident, and a softmax is flat
  there: PP-OCR cls's plan kept cosine 0.99997 on every judged sample, while its logits moved by
  1.4, which on a new crop at p = 0.60 gives cosine 0.84. `at_decision_boundary` rewrites each
  row of a probability output (non-negative, summing to 1 along an axis) as if the reference
  stood at the boundary between its two likeliest classes, and moves the candidate by the same
  change in their log-odds: the error as a near-tie input would see it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["predicted_worst", "probability_axis", "at_decision_boundary", "without_boundary_views", "BOUNDARY_SUFFIX", "FEWEST"]

BOUNDARY_SUFFIX = "@boundary"  # a probability output's entry among measured outputs: `NAME@boundary`
_Z = 2.576  # one-sided 99.5% point of the standard normal: 4 new inputs all keep the budget 98% of the time
FEWEST = 5  # a spread from fewer samples says nothing; below this the worst judged sample stands
_FLOOR = 1e-9  # 1 − cosine below this is float32 noise, not a quantity to fit


def predicted_worst(values: list[float], kind: str) -> float:
    """The 99.5% prediction bound on a new sample's `kind` ("cosine" or "sqnr_db"), from the judged
    samples' `values`; never better than the worst judged one."""
    finite = [value for value in values if math.isfinite(value)]
    worst = min(values) if values else (1.0 if kind == "cosine" else math.inf)
    if len(finite) < FEWEST:
        return worst
    reach = _prediction_reach(len(finite))
    if kind == "cosine":
        logs = np.log10(np.maximum(1.0 - np.asarray(finite, np.float64), _FLOOR))
        return float(min(worst, 1.0 - 10.0 ** (logs.mean() + reach * logs.std(ddof=1))))
    spread = np.asarray(finite, np.float64)
    return float(min(worst, spread.mean() - reach * spread.std(ddof=1)))


def _prediction_reach(count: int) -> float:
    """Standard deviations from the mean to the 99.5% bound of one new sample, when mean and
    spread are themselves estimated from `count` samples: Student's t (Cornish-Fisher: within
    1% of the table from 7 degrees of freedom, 5% under it at 4) times sqrt(1 + 1/count). 3.03 for 16 samples:
    orientation's plan judged at 0.9966 on 16 gave 0.9894 on the next 4 with the normal's 2.33."""
    freedom = count - 1
    t = _Z + (_Z ** 3 + _Z) / (4 * freedom) + (5 * _Z ** 5 + 16 * _Z ** 3 + 3 * _Z) / (96 * freedom ** 2)
    return t * math.sqrt(1.0 + 1.0 / count)


def probability_axis(samples: list[np.ndarray]) -> int | None:
    """The axis along which every sample's output is a probability distribution (values in [0, 1]
    summing to 1, at least 2 classes), the last such axis; None when there is none."""
    arrays = [np.asarray(sample) for sample in samples]
    if not arrays or any(a.dtype.kind != "f" or a.ndim == 0 or a.size == 0 for a in arrays):
        return None
    if any(float(a.min()) < -1e-6 or float(a.max()) > 1.0 + 1e-6 for a in arrays):
        return None
    for axis in range(arrays[0].ndim - 1, -1, -1):
        if arrays[0].shape[axis] >= 2 and all(np.allclose(a.sum(axis=axis, dtype=np.float64), 1.0, atol=1e-3) for a in arrays):
            return axis
    return None


def at_decision_boundary(reference: np.ndarray, candidate: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, candidate) of one sample, each row along `axis` moved to the boundary between
    the reference's two likeliest classes: the reference splits their mass evenly, the candidate
    splits its own mass of the two by its log-odds error, sigmoid(d_candidate − d_reference)."""
    ref = np.moveaxis(np.asarray(reference, np.float64), axis, -1).reshape(-1, reference.shape[axis])
    cand = np.moveaxis(np.asarray(candidate, np.float64), axis, -1).reshape(-1, reference.shape[axis])
    top = np.argsort(-ref, axis=1, kind="stable")
    rows, first, second = np.arange(len(ref)), top[:, 0], top[:, 1]
    log = lambda values: np.log(np.maximum(values, 1e-38))  # noqa: E731 - an underflowed probability reads as float32's least
    error = (log(cand[rows, first]) - log(cand[rows, second])) - (log(ref[rows, first]) - log(ref[rows, second]))
    share = 1.0 / (1.0 + np.exp(-np.clip(error, -50.0, 50.0)))
    ref_mass, cand_mass = ref[rows, first] + ref[rows, second], cand[rows, first] + cand[rows, second]
    ref, cand = ref.copy(), cand.copy()
    ref[rows, first] = ref[rows, second] = ref_mass / 2
    cand[rows, first], cand[rows, second] = cand_mass * share, cand_mass * (1.0 - share)
    return ref.ravel(), cand.ravel()


def without_boundary_views(measured: dict[str, dict]) -> dict[str, dict]:
    """`measured` (`metrics.measure_outputs`) without the decision-boundary entries: the outputs as they are."""
    return {name: values for name, values in measured.items() if not name.endswith(BOUNDARY_SUFFIX)}
