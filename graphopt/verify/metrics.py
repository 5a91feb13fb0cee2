"""Agreement between two sets of model outputs: lossless tolerances and lossy metrics.

Lossless passes must reproduce every output elementwise within a tolerance suited to its dtype
(integers and booleans exactly). Lossy passes are held to a budget on cosine similarity, SQNR
(dB), and max abs/rel error, per output and *per sample*: `cos=0.99` means every verification
sample keeps cosine 0.99, so a budget compares the worst sample (`sample_metrics`). A cosine
over all samples stacked lets one sample with a large output hide the others.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from graphopt.errors import UsageError
from graphopt.verify.unseen import BOUNDARY_SUFFIX, at_decision_boundary, predicted_worst, probability_axis

__all__ = ["Tolerance", "tolerance_for", "Budget", "output_metrics", "sample_metrics", "stacked_sample_metrics", "within_tolerance",
           "typical_energy", "SILENT", "LOUD_RESIDUE"]


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
    score_drop: float | None = None  # `score=-1%`: the user evaluator's score may drop this fraction at most
    score_min: float | None = None  # `score>=0.75`: ... and must stay at least this

    @classmethod
    def parse(cls, text: str | None) -> Budget | None:
        """`"cos=0.99"`, `"sqnr:30"`, `"cos=0.99,abs=0.1"`, `"score=-1%"`, `"score>=0.75"` → Budget."""
        if not text:
            return None
        values = {}
        for part in re.split(r"[,\s]+", text.strip()):
            if part.startswith("score"):
                values.update(_score_term(part))
                continue
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
            score_drop=pick(self.score_drop, other.score_drop, min),
            score_min=pick(self.score_min, other.score_min, max),
        )

    def score_budget(self):
        """The evaluator's budget (`graphopt.verify.evaluator.ScoreBudget`), or None when unset."""
        if self.score_drop is None and self.score_min is None:
            return None
        from graphopt.verify.evaluator import ScoreBudget

        return ScoreBudget(drop=self.score_drop, minimum=self.score_min)

    def violations(self, name: str, metrics: dict, unseen: bool = False) -> list[str]:
        """What `metrics` (one output's, from `sample_metrics` or `output_metrics`) breaks.

        `cosine` and `sqnr_db` are the worst sample's where the metrics are per sample; with
        `unseen`, the worst a new input is predicted to give must meet the budget too
        (`cosine_predicted`, `graphopt.verify.unseen`)."""
        found = []
        if unseen and "cosine_predicted" in metrics:
            if self.cos is not None and metrics["cosine_predicted"] < self.cos <= metrics["cosine"]:
                found.append(f"output '{name}': cosine predicted for a new input {metrics['cosine_predicted']:.6f} < {self.cos} "
                             f"(worst of {metrics['samples']} judged samples {metrics['cosine']:.6f})")
            if self.sqnr is not None and metrics["sqnr_db_predicted"] < self.sqnr <= metrics["sqnr_db"]:
                found.append(f"output '{name}': SQNR predicted for a new input {metrics['sqnr_db_predicted']:.2f} dB < {self.sqnr}")
        where = f" (sample {metrics['worst_sample']}; mean {metrics['cosine_mean']:.6f}, pooled {metrics['cosine_pooled']:.6f})" \
            if "worst_sample" in metrics else ""
        if self.cos is not None and metrics["cosine"] < self.cos:
            found.append(f"output '{name}': {'worst-sample ' if where else ''}cosine {metrics['cosine']:.6f} < {self.cos}{where}")
        if self.sqnr is not None and metrics["sqnr_db"] < self.sqnr:
            found.append(f"output '{name}': {'worst-sample ' if where else ''}SQNR {metrics['sqnr_db']:.2f} dB < {self.sqnr}")
        if self.abs is not None and metrics["max_abs"] > self.abs:
            found.append(f"output '{name}': max abs error {metrics['max_abs']:.3g} > {self.abs}")
        if self.rel is not None and metrics["max_rel"] > self.rel:
            found.append(f"output '{name}': max rel error {metrics['max_rel']:.3g} > {self.rel}")
        return found

    def tightened(self, safety: float) -> Budget:
        """This budget with `safety` of each bound's room given up: cos 0.99 at 0.2 → 0.992; at 1.0, exactness."""
        keep = 1.0 - safety
        changes = {}
        if self.cos is not None:
            changes["cos"] = 1.0 - (1.0 - self.cos) * keep
        if self.sqnr is not None:
            changes["sqnr"] = self.sqnr - 10.0 * math.log10(keep) if keep > 0 else math.inf
        if self.abs is not None:
            changes["abs"] = self.abs * keep
        if self.rel is not None:
            changes["rel"] = self.rel * keep
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        terms = [f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v is not None and not k.startswith("score")]
        score = self.score_budget()
        return ",".join(terms + ([score.describe()] if score else []))


def _score_term(part: str) -> dict:
    """`score=-1%` → {"score_drop": 0.01}; `score>=0.75` → {"score_min": 0.75}."""
    relative = re.fullmatch(r"score=-?(\d+(?:\.\d*)?)%", part)
    floor = re.fullmatch(r"score>=(-?\d+(?:\.\d*)?(?:e-?\d+)?)", part)
    if relative:
        return {"score_drop": float(relative.group(1)) / 100}
    if floor:
        return {"score_min": float(floor.group(1))}
    raise UsageError(f"a score budget is score=-P% (relative drop) or score>=VALUE (floor); got '{part}'")


def output_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Cosine similarity, SQNR (dB), max abs and max rel error of `candidate` against `reference`."""
    if reference.shape != candidate.shape:
        return {"shape_mismatch": [list(reference.shape), list(candidate.shape)], "cosine": -1.0,
                "sqnr_db": -math.inf, "max_abs": math.inf, "max_rel": math.inf}
    if reference.dtype.kind in "OUS":
        equal = bool(np.array_equal(reference, candidate))
        return {"cosine": 1.0 if equal else 0.0, "sqnr_db": math.inf if equal else 0.0,
                "max_abs": 0.0 if equal else math.inf, "max_rel": 0.0 if equal else math.inf}
    return _from_sums(*_sums(reference, candidate))


def _sums(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(signal, noise, power, cross, max abs, max rel) of two numeric arrays of one shape, NaN and
    infinities read as 0: what `output_metrics` is made of, and what adds up over samples."""
    ref, cand = _finite(reference), _finite(candidate)
    error = cand - ref
    # einsum, not `@`: a threaded BLAS dot on a busy machine spins its threads (12 ms instead of
    # 0.2 ms for 250k values), and the quantize planner measures thousands of outputs.
    signal, noise, power, cross = _dot(ref, ref), _dot(error, error), _dot(cand, cand), _dot(ref, cand)
    magnitude = np.abs(error)
    max_abs = float(np.max(magnitude)) if error.size else 0.0
    max_rel = float(np.max(magnitude / np.maximum(np.abs(ref), 1e-12))) if error.size else 0.0
    return signal, noise, power, cross, max_abs, max_rel


def _finite(values: np.ndarray) -> np.ndarray:
    flat = values.astype(np.float64).ravel()
    return flat if np.isfinite(flat).all() else np.nan_to_num(flat, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _from_sums(signal: float, noise: float, power: float, cross: float, max_abs: float, max_rel: float) -> dict:
    norms = math.sqrt(signal) * math.sqrt(power)
    if norms == 0.0:
        cosine = 1.0 if signal == power else 0.0
    else:
        cosine = cross / norms
    sqnr = math.inf if noise == 0.0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return {"cosine": cosine, "sqnr_db": sqnr, "max_abs": max_abs, "max_rel": max_rel}


def _pooled(sums: list[tuple]) -> dict:
    """`output_metrics` over all samples flattened together, from each sample's `_sums`."""
    if not sums:
        return _from_sums(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    signal, noise, power, cross = (math.fsum(part[i] for part in sums) for i in range(4))
    return _from_sums(signal, noise, power, cross, max(part[4] for part in sums), max(part[5] for part in sums))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("i,i->", a, b))


# A sample whose reference output is (near) silent has no direction to keep: its cosine is
# judged only if the candidate's energy there is not negligible against a typical sample's.
_SILENT = 1e-12
_LOUD_RESIDUE = 1e-6  # a silent sample's candidate error, against a typical sample's energy, that counts it as lost


def typical_energy(references: list[np.ndarray]) -> tuple[list[float], float]:
    """(each sample's reference energy, the typical one) of one output: a sample is judged when
    its energy exceeds `SILENT` times the typical one, or its candidate's error there exceeds
    `LOUD_RESIDUE` times it (`sample_metrics`)."""
    energies = [float(np.sum(np.square(np.ravel(r).astype(np.float64)))) if np.asarray(r).dtype.kind not in "OUS" else 1.0
                for r in references]
    return energies, max(float(np.mean(energies)), _SILENT)


SILENT, LOUD_RESIDUE = _SILENT, _LOUD_RESIDUE


def sample_metrics(references: list[np.ndarray], candidates: list[np.ndarray]) -> dict:
    """One output's metrics per sample and pooled: what budgets compare.

    `cosine` and `sqnr_db` are the worst sample's (the budget's reading: every sample keeps
    it), `cosine_mean`/`sqnr_db_mean` their mean over samples, `cosine_pooled`/`sqnr_db_pooled`
    over all samples flattened together (the pre-0.2 figure), `max_abs`/`max_rel` over all,
    `worst_sample` the index of the lowest-cosine sample, `samples` the count,
    `cosine_predicted`/`sqnr_db_predicted` the worst a new input is predicted to give
    (`graphopt.verify.unseen.predicted_worst`).
    """
    numeric = all(np.asarray(array).dtype.kind not in "OUS" for array in (*references, *candidates))
    if not references or not numeric or len(references) != len(candidates) \
            or any(np.shape(r) != np.shape(c) for r, c in zip(references, candidates)):
        pooled = output_metrics(np.concatenate([np.ravel(r) for r in references]) if references else np.zeros(0),
                                np.concatenate([np.ravel(c) for c in candidates]) if candidates else np.zeros(0))
        if "shape_mismatch" in pooled or not references or any(np.shape(r) != np.shape(c) for r, c in zip(references, candidates)):
            return dict(pooled, cosine_pooled=pooled["cosine"], cosine_mean=pooled["cosine"],
                        sqnr_db_pooled=pooled["sqnr_db"], sqnr_db_mean=pooled["sqnr_db"], worst_sample=0, samples=len(references))
        per = [output_metrics(np.ravel(r), np.ravel(c)) for r, c in zip(references, candidates)]
    else:  # each sample's sums once: its metrics, and the pooled ones added up (no stacked copy of every output)
        sums = [_sums(np.asarray(r), np.asarray(c)) for r, c in zip(references, candidates)]
        per, pooled = [_from_sums(*part) for part in sums], _pooled(sums)
    energies, typical = typical_energy(references)
    judged = [index for index, energy in enumerate(energies) if energy > _SILENT * typical]
    for index, (ref, cand) in enumerate(zip(references, candidates)):
        if index not in judged and np.asarray(ref).dtype.kind not in "OUS":
            residue = float(np.sum(np.square(np.ravel(cand).astype(np.float64) - np.ravel(ref))))
            if residue > _LOUD_RESIDUE * typical:  # a silent sample made loud: count it as lost
                judged.append(index)
    judged = judged or list(range(len(per)))
    cosines = [per[index]["cosine"] for index in judged]
    sqnrs = [per[index]["sqnr_db"] for index in judged]
    worst = judged[int(np.argmin(cosines))]
    finite = [value for value in sqnrs if math.isfinite(value)]
    return {
        "cosine": float(min(cosines)), "cosine_mean": float(np.mean(cosines)), "cosine_pooled": pooled["cosine"],
        "sqnr_db": float(min(sqnrs)), "sqnr_db_mean": float(np.mean(finite)) if finite else float(min(sqnrs)),
        "sqnr_db_pooled": pooled["sqnr_db"], "max_abs": pooled["max_abs"], "max_rel": pooled["max_rel"],
        "worst_sample": int(worst), "samples": len(per),
        "cosine_predicted": predicted_worst(cosines, "cosine"), "sqnr_db_predicted": predicted_worst(sqnrs, "sqnr_db"),
    }


def stacked_sample_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """`sample_metrics` of two arrays stacked over samples (axis 0 = sample)."""
    if reference.shape != candidate.shape:
        return sample_metrics([reference], [candidate])
    return sample_metrics(list(reference), list(candidate))


def measure_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], slices=(), boundary: bool = False) -> dict[str, dict]:
    """Per float output, and per slice of one (`graphopt.verify.slices`), the per-sample metrics
    of `candidate` against `reference`, both `{output: array stacked over samples}`; with
    `boundary`, also each probability output's at its decision boundary (`NAME@boundary`,
    `graphopt.verify.unseen.at_decision_boundary`)."""
    measured = {name: stacked_sample_metrics(expected, candidate[name]) for name, expected in reference.items()
                if expected.dtype.kind == "f" and name in candidate}
    for name in [name for name in measured if boundary and reference[name].shape == candidate[name].shape]:
        axis = probability_axis(list(reference[name]))
        if axis is not None:
            views = [at_decision_boundary(r, c, axis) for r, c in zip(reference[name], candidate[name])]
            measured[name + BOUNDARY_SUFFIX] = dict(sample_metrics([r for r, _ in views], [c for _, c in views]), boundary_of=name)
    for part in slices:
        if part.output in measured and reference[part.output].shape == candidate[part.output].shape:
            pieces = [(part.take(r), part.take(c)) for r, c in zip(reference[part.output], candidate[part.output])]
            if all(r is not None and r.size for r, _ in pieces):
                measured[part.key()] = dict(sample_metrics([r for r, _ in pieces], [c for _, c in pieces]), slice_of=part.output)
    return measured


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
