"""Running a candidate plan sample by sample, stopped at the first sample that breaks the budget.

The search refuses most of the plans it tries, and one sample that breaks the budget is
enough to refuse a plan: `judged_outputs` runs the samples one at a time (the one that broke
the last refused plan first) and stops there. A sample decides alone only where the judgement
over every sample (`worst_metrics`) would count it the same way: a worst-sample cosine or SQNR,
a max abs or rel error, each of which one sample can only lower (raise). The verifier does not
judge a sample whose reference is silent (`graphopt.verify.metrics.sample_metrics`), a rule that
reads every sample's reference energy: known before any candidate runs, so applied here alike.
A probability output is judged at its decision boundary too (`graphopt.verify.unseen`), sample
by sample as `worst_metrics` judges it. Slices of outputs never stop a run early; a plan no sample refuses is judged on all of them,
as before. So the search refuses and accepts exactly the plans it did, on fewer runs.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from graphopt.verify.feeds import split_samples
from graphopt.verify.metrics import LOUD_RESIDUE, SILENT, Budget, output_metrics, typical_energy
from graphopt.verify.runner import make_session, run_samples
from graphopt.verify.unseen import BOUNDARY_SUFFIX, at_decision_boundary, probability_axis

__all__ = ["SampleJudge", "judged_outputs"]


class SampleJudge:
    """What one sample of a candidate proves against `reference` (`{output: array stacked over samples}`)."""

    def __init__(self, reference: dict[str, np.ndarray], budget: Budget):
        self.reference, self.budget = reference, budget
        self.loudness: dict[str, tuple[list[float], float]] = {}  # per float output: (energy per sample, typical)
        self.probability_axes: dict[str, int] = {}  # per probability output: its class axis (judged at the boundary too)
        for name, stacked in reference.items():
            if stacked.dtype.kind != "f":
                continue
            if (axis := probability_axis(list(stacked))) is not None:
                self.probability_axes[name] = axis
            energies, typical = typical_energy(list(stacked))
            if any(energy > SILENT * typical for energy in energies):  # else every sample is judged, silent or not
                self.loudness[name] = (energies, typical)

    def breaks(self, index: int, outputs: dict[str, np.ndarray]) -> dict | None:
        """What sample `index` alone proves: None, or its lowest cosine and SQNR over the outputs
        it is judged on and the budget's violations there (`worst_metrics`' form, `ok` false)."""
        cosine, sqnr, found = 1.0, math.inf, []
        for name, (energies, typical) in self.loudness.items():
            candidate = outputs.get(name)
            expected = self.reference[name][index]
            if candidate is None or np.shape(candidate) != expected.shape:
                continue  # the judgement over all samples says what a missing or reshaped output means
            if energies[index] <= SILENT * typical:
                residue = float(np.sum(np.square(np.ravel(candidate).astype(np.float64) - np.ravel(expected))))
                if residue <= LOUD_RESIDUE * typical:
                    continue  # a silent sample left silent is not judged
            views = {name: (np.ravel(expected), np.ravel(candidate))}
            if name in self.probability_axes:
                views[name + BOUNDARY_SUFFIX] = at_decision_boundary(expected, np.asarray(candidate), self.probability_axes[name])
            for view, (ref, cand) in views.items():
                metrics = output_metrics(ref, cand)
                cosine, sqnr = min(cosine, metrics["cosine"]), min(sqnr, metrics["sqnr_db"])
                found += [f"{problem} (sample {index})" for problem in self.budget.violations(view, metrics)]
        return {"cosine": cosine, "sqnr_db": sqnr, "ok": False, "violations": found} if found else None


def judged_outputs(model: onnx.ModelProto, samples: dict[str, np.ndarray], judge: SampleJudge | None, *,
                   optimize: bool, first: int = 0, workers: int = 1) -> tuple[dict[str, np.ndarray] | None, int | None, dict | None, int]:
    """(outputs stacked over samples, None, None, runs) when no sample breaks the budget, else
    (None, the sample that broke it, what it proves (`SampleJudge.breaks`), runs). One session
    at 1 thread, as `stacked_outputs` runs it; `first` first, then in order, `workers` samples
    at a time (side by side on threads of this process: the same outputs, judged in that order)."""
    session = make_session(model, optimize=optimize, threads=1)
    names = {value.name for value in model.graph.input}
    split = split_samples({k: v for k, v in samples.items() if k in names})
    first = first if 0 <= first < len(split) else 0
    order = [first] + [i for i in range(len(split)) if i != first]
    results: list[dict | None] = [None] * len(split)
    workers = max(1, min(workers, len(split)))
    with ThreadPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
        for start in range(0, len(order), workers):
            batch = order[start:start + workers]
            if pool is None:
                results[batch[0]] = run_samples(session, [split[batch[0]]])[0]
            else:
                for index, future in [(i, pool.submit(run_samples, session, [split[i]])) for i in batch]:
                    results[index] = future.result()[0]
            for index in batch:
                if judge is not None and (refusal := judge.breaks(index, results[index])) is not None:
                    return None, index, refusal, start + len(batch)
    return {name: np.stack([result[name] for result in results]) for name in results[0]}, None, None, len(split)
