"""The verifier: runs a reference and a candidate model in onnxruntime and judges agreement."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx

from graphopt.jsonable import to_jsonable
from graphopt.verify.feeds import generate_feeds, input_specs, load_feeds, parse_input_shape, split_samples
from graphopt.verify.localize import first_divergence
from graphopt.verify.tensor_errors import per_tensor_errors
from graphopt.verify.metrics import Budget, Tolerance, output_metrics, sample_metrics, tolerance_for, within_tolerance
from graphopt.verify.precision import lossless_floor, looser
from graphopt.verify.runner import SessionError, make_session, run_samples
from graphopt.verify.slices import OutputSlice, detect_slices, parse_slices

__all__ = [
    "Verdict",
    "Verifier",
    "Budget",
    "Tolerance",
    "SessionError",
    "generate_feeds",
    "load_feeds",
    "input_specs",
    "parse_input_shape",
    "split_samples",
    "output_metrics",
    "sample_metrics",
    "tolerance_for",
    "lossless_floor",
    "within_tolerance",
    "first_divergence",
    "OutputSlice",
    "detect_slices",
    "parse_slices",
]

logger = logging.getLogger(__name__)

WORST_TENSOR_ROWS = 10  # rows of per-tensor errors a failed budget puts in the report


@dataclasses.dataclass
class Verdict:
    """Whether a candidate agrees with its reference, and the per-output evidence.

    `outputs[name]` holds, per output, `cosine` and `sqnr_db` of the *worst* sample (what a
    budget compares), `cosine_mean`/`sqnr_db_mean` over samples, `cosine_pooled`/`sqnr_db_pooled`
    over all samples flattened together, `max_abs`/`max_rel` over all, `worst_sample`,
    `samples` and `within` (`metrics.sample_metrics`). Under a budget, each slice of an output
    (`slices.py`: declared with `--budget-slices` or detected) has an entry of its own, keyed
    `NAME@AXIS[START:STOP]` with `slice_of: NAME`, and the budget holds on it too.
    """

    ok: bool
    mode: str  # "lossless" or "budget"
    outputs: dict[str, dict]
    failures: list[str]
    first_divergence: dict | None = None
    worst_tensors: list[dict] | None = None  # on a missed budget: shared tensors, worst SQNR first

    def summary(self) -> str:
        return self.failures[0] if self.failures else "all outputs agree"

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "outputs": self.outputs,
            "failures": self.failures,
            "first_divergence": self.first_divergence,
            **({"worst_tensors": self.worst_tensors} if self.worst_tensors is not None else {}),
        }


class Verifier:
    """Judges candidates against references on a fixed list of input samples."""

    def __init__(self, samples: list[dict[str, np.ndarray]], slices: tuple[OutputSlice, ...] = (),
                 precision: Tolerance | None = None):
        self.samples = samples
        self.slices = tuple(slices)  # parts of outputs judged on their own under a budget
        # the reference's own precision (`precision.lossless_floor`): no float output is held closer
        self.precision = precision

    def outputs(self, model: onnx.ModelProto | bytes) -> list[dict[str, np.ndarray]]:
        """Runs `model` (a proto or its bytes; ORT, optimizations off) on every sample. Raises SessionError."""
        return run_samples(make_session(model), self.samples)

    def judge(
        self,
        reference_outputs: list[dict[str, np.ndarray]],
        candidate_outputs: list[dict[str, np.ndarray]],
        *,
        budget: Budget | None,
    ) -> Verdict:
        """Lossless (per-dtype tolerance) when `budget` is None, else against the budget."""
        outputs, failures = {}, []
        for name in reference_outputs[0]:
            if name not in candidate_outputs[0]:
                failures.append(f"output '{name}' is missing")
                continue
            ref, ref_structure = _flatten(sample[name] for sample in reference_outputs)
            cand, cand_structure = _flatten(sample[name] for sample in candidate_outputs)
            shapes_agree = ref_structure == cand_structure
            if shapes_agree:
                metrics = sample_metrics([_flatten([sample[name]])[0] for sample in reference_outputs],
                                         [_flatten([sample[name]])[0] for sample in candidate_outputs])
            else:
                metrics = output_metrics(ref[:0], cand[:1])
            if budget is None:
                tolerance = looser(tolerance_for(ref.dtype), self.precision) if ref.dtype.kind == "f" else tolerance_for(ref.dtype)
                within = shapes_agree and ref.dtype == cand.dtype and within_tolerance(ref, cand, tolerance)
                metrics["tolerance"] = dataclasses.asdict(tolerance)
                if not within:
                    failures.append(_lossless_failure(name, ref, cand, metrics, shapes_agree, tolerance))
            else:
                problems = budget.violations(name, metrics) if shapes_agree else [f"output '{name}': shape changed"]
                within = not problems
                failures.extend(problems)
            metrics["within"] = bool(within)
            outputs[name] = to_jsonable(metrics)
            if budget is not None and shapes_agree:
                for part in (part for part in self.slices if part.output == name):
                    pieces = [(part.take(r[name]), part.take(c[name])) for r, c in zip(reference_outputs, candidate_outputs)]
                    if any(r is None or not np.asarray(r).size or np.asarray(r).dtype.kind != "f" for r, _ in pieces):
                        continue
                    sliced = sample_metrics([r for r, _ in pieces], [c for _, c in pieces])
                    problems = budget.violations(part.key(), sliced)
                    failures.extend(problems)
                    outputs[part.key()] = to_jsonable(dict(sliced, slice_of=name, within=not problems))
        return Verdict(not failures, "lossless" if budget is None else "budget", outputs, failures)

    def localize(self, reference: onnx.ModelProto, candidate: onnx.ModelProto, *, budget: Budget | None) -> dict | None:
        """The first node whose output diverges, by tensors both graphs still share."""
        try:
            found = first_divergence(reference, candidate, self.samples[0], budget=budget)
        except Exception as error:  # localisation is a diagnosis; it must not mask the verdict
            logger.debug("localisation failed: %s", error)
            return None
        return to_jsonable(found) if found else None

    def worst_tensors(self, reference: onnx.ModelProto, candidate: onnx.ModelProto, limit: int = WORST_TENSOR_ROWS) -> list[dict] | None:
        """The tensors both models share, worst SQNR first, on the first two samples: where a
        missed budget's error comes from (`verify --per-tensor` gives every row)."""
        samples = self.samples[:2]
        try:
            stacked = {name: np.stack([sample[name] for sample in samples]) for name in samples[0]}
            return to_jsonable(per_tensor_errors(reference, candidate, stacked, limit=limit))
        except Exception as error:  # a diagnosis; it must not mask the verdict
            logger.debug("per-tensor errors failed: %s", error)
            return None


def _flatten(values) -> tuple[np.ndarray, list]:
    """One output over all samples as a flat array, and its structure (shapes, sequence lengths, absences).

    onnxruntime returns a tensor as an array, a sequence as a list of arrays and an empty
    optional as None; two outputs agree only if their structures are equal.
    """
    parts, structure = [], []
    for value in values:
        if value is None:
            structure.append(None)
        elif isinstance(value, (list, tuple)):
            elements = [np.asarray(element) for element in value]
            structure.append(("sequence", tuple(element.shape for element in elements)))
            parts.extend(elements)
        else:
            array = np.asarray(value)
            structure.append(array.shape)
            parts.append(array)
    if not parts:
        return np.zeros(0, dtype=np.float32), structure
    return np.concatenate([np.ravel(part) for part in parts]), structure


def _lossless_failure(name, ref, cand, metrics, shapes_agree, tolerance) -> str:
    if not shapes_agree:
        return f"output '{name}': shape changed"
    if ref.dtype != cand.dtype:
        return f"output '{name}': dtype changed from {ref.dtype} to {cand.dtype}"
    return (
        f"output '{name}': max abs error {metrics['max_abs']:.3g} exceeds the lossless tolerance "
        f"(rtol {tolerance.rtol:g}, atol {tolerance.atol:g})"
    )
