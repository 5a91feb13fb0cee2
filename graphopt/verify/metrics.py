"""Agreement between two sets of model outputs: lossless tolerances and lossy metrics.

Lossless passes must reproduce every output elementwise within a tolerance suited to its dtype
(integers and booleans exactly). Lossy passes are held to a budget on cosine similarity, SQNR
(dB), and max abs/rel error, per output.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from graphopt.errors import UsageError

__all__ = ["Tolerance", "tolerance_for", "Budget", "output_metrics", "within_tolerance"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


# Lossless rewrites reassociate float arithmetic (a folded BN, a fused bias), so float outputs
# may move by a few ulps times the depth of the graph; integers and booleans must not move.
_LOSSLESS = {
    np.dtype(np.float64): Tolerance(rtol=1e-6, atol=1e-8),
    np.dtype(np.float32): Tolerance(rtol=1e-3, atol=1e-4),
    np.dtype(np.float16): Tolerance(rtol=1e-2, atol=1e-3),
}
_LOW_PRECISION = Tolerance(rtol=2e-2, atol=1e-2)  # bfloat16 and the 8-bit floats
_EXACT = Tolerance(rtol=0.0, atol=0.0)


def tolerance_for(dtype: np.dtype) -> Tolerance:
    dtype = np.dtype(dtype)
    if dtype in _LOSSLESS:
        return _LOSSLESS[dtype]
    if dtype.kind == "V" or (dtype.kind == "f"):
        return _LOW_PRECISION
    return _EXACT


@dataclasses.dataclass(frozen=True)
class Budget:
    """Lower bounds on cosine / SQNR and upper bounds on max abs / rel error; None = unchecked."""

    cos: float | None = None
    sqnr: float | None = None
    abs: float | None = None
    rel: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> Budget | None:
        """`"cos=0.99"`, `"sqnr:30"`, `"cos=0.99,abs=0.1"` → Budget."""
        if not text:
            return None
        values = {}
        for part in re.split(r"[,\s]+", text.strip()):
            key, sep, value = part.replace(":", "=").partition("=")
            key = {"cosine": "cos", "sqnr_db": "sqnr"}.get(key.strip(), key.strip())
            if not sep or key not in ("cos", "sqnr", "abs", "rel"):
                raise UsageError(f"budget expects METRIC=VALUE with METRIC one of cos, sqnr, abs, rel; got '{part}'")
            try:
                values[key] = float(value)
            except ValueError as error:
                raise UsageError(f"budget value for {key} is not a number: '{value}'") from error
        _check_ranges(values)
        return cls(**values)

    def merge(self, other: Budget | None) -> Budget:
        """The stricter of two budgets, metric by metric."""
        if other is None:
            return self
        def pick(a, b, stricter):
            return b if a is None else a if b is None else stricter(a, b)
        return Budget(
            cos=pick(self.cos, other.cos, max),
            sqnr=pick(self.sqnr, other.sqnr, max),
            abs=pick(self.abs, other.abs, min),
            rel=pick(self.rel, other.rel, min),
        )

    def violations(self, name: str, metrics: dict) -> list[str]:
        found = []
        if self.cos is not None and metrics["cosine"] < self.cos:
            found.append(f"output '{name}': cosine {metrics['cosine']:.6f} < {self.cos}")
        if self.sqnr is not None and metrics["sqnr_db"] < self.sqnr:
            found.append(f"output '{name}': SQNR {metrics['sqnr_db']:.2f} dB < {self.sqnr}")
        if self.abs is not None and metrics["max_abs"] > self.abs:
            found.append(f"output '{name}': max abs error {metrics['max_abs']:.3g} > {self.abs}")
        if self.rel is not None and metrics["max_rel"] > self.rel:
            found.append(f"output '{name}': max rel error {metrics['max_rel']:.3g} > {self.rel}")
        return found

    def describe(self) -> str:
        return ",".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v is not None)


def output_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Cosine similarity, SQNR (dB), max abs and max rel error of `candidate` against `reference`."""
    if reference.shape != candidate.shape:
        return {"shape_mismatch": [list(reference.shape), list(candidate.shape)], "cosine": -1.0,
                "sqnr_db": -math.inf, "max_abs": math.inf, "max_rel": math.inf}
    if reference.dtype.kind in "OUS":
        equal = bool(np.array_equal(reference, candidate))
        return {"cosine": 1.0 if equal else 0.0, "sqnr_db": math.inf if equal else 0.0,
                "max_abs": 0.0 if equal else math.inf, "max_rel": 0.0 if equal else math.inf}
    ref = np.nan_to_num(reference.astype(np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    cand = np.nan_to_num(candidate.astype(np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    error = cand - ref
    signal, noise = float(ref @ ref), float(error @ error)
    norms = math.sqrt(signal) * math.sqrt(float(cand @ cand))
    if norms == 0.0:
        cosine = 1.0 if signal == float(cand @ cand) else 0.0
    else:
        cosine = float(ref @ cand) / norms
    sqnr = math.inf if noise == 0.0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    max_abs = float(np.max(np.abs(error))) if error.size else 0.0
    max_rel = float(np.max(np.abs(error) / np.maximum(np.abs(ref), 1e-12))) if error.size else 0.0
    return {"cosine": cosine, "sqnr_db": sqnr, "max_abs": max_abs, "max_rel": max_rel}


def within_tolerance(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance | None = None) -> bool:
    """Elementwise agreement; NaNs must stand in the same places, infinities must match."""
    if reference.shape != candidate.shape:
        return False
    if reference.dtype.kind in "OUSb" or tolerance == _EXACT:
        return bool(np.array_equal(reference, candidate))
    tolerance = tolerance or tolerance_for(reference.dtype)
    return bool(np.allclose(candidate.astype(np.float64), reference.astype(np.float64),
                            rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True))


def _check_ranges(values: dict[str, float]) -> None:
    """cos in (0, 1], sqnr finite, abs and rel finite and at least 0: anything else is a typo."""
    from graphopt.parameter_names import parameter

    problems = []
    if "cos" in values and not 0.0 < values["cos"] <= 1.0:
        problems.append(f"cos must be in (0, 1], got {values['cos']:g}")
    if "sqnr" in values and not math.isfinite(values["sqnr"]):
        problems.append(f"sqnr must be a finite number of dB, got {values['sqnr']:g}")
    for key in ("abs", "rel"):
        if key in values and not (math.isfinite(values[key]) and values[key] >= 0):
            problems.append(f"{key} must be a finite number at least 0, got {values[key]:g}")
    if problems:
        raise UsageError(f"{parameter('budget')}: {'; '.join(problems)}")
