"""Judging a factorized candidate: per-sample metrics against the input model's outputs, and the budget."""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.verify.feeds import split_samples
from graphopt.verify.metrics import Budget, measure_outputs
from graphopt.verify.runner import make_session, run_samples

__all__ = ["judged_metrics", "input_names", "misses", "worst_cosine", "cosines"]


def judged_metrics(candidate: onnx.ModelProto, samples: dict, reference: dict[str, np.ndarray], slices=(),
                   boundary: bool = False) -> dict[str, dict]:
    """Per output (and slice of one), the candidate's per-sample metrics against `reference`
    (the model's outputs on `samples`); with `boundary`, each probability output's at its
    decision boundary too (`measure_outputs`). One thread, ORT's optimizations on: probes run dozens
    of times a pass, on a shared machine, and fusion moves outputs by ~1e-6, not by a budget."""
    session = make_session(candidate, optimize=True, threads=1)
    names = list(reference)
    runs = run_samples(session, split_samples({k: v for k, v in samples.items() if k in input_names(candidate)}), names)
    return measure_outputs(reference, {name: np.stack([run[name] for run in runs]) for name in names}, slices, boundary)


def input_names(model: onnx.ModelProto) -> set[str]:
    return {value.name for value in model.graph.input}


def misses(budget: Budget, measured: dict[str, dict], unseen: bool = False) -> bool:
    """Whether `measured` breaks `budget`; with `unseen`, also where a new input is predicted to (`Budget.violations`)."""
    return any(budget.violations(name, values, unseen) for name, values in measured.items())



def worst_cosine(measured: dict[str, dict]) -> float:
    return min(values["cosine"] for values in measured.values())


def cosines(measured: dict[str, dict]) -> str:
    return ", ".join(f"{name}: cos {values['cosine']:.5f}" for name, values in measured.items())
