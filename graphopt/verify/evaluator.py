"""A user's own task metric as a budget: top-1 accuracy, mean IoU, anything that scores a model.

Output cosine is a proxy. `--evaluator pkg.module:function` (API `evaluator=callable`) scores a
model as `function(model_path, inputs) -> float` (an .onnx path; the `--inputs` data).
`--budget score=-1%` allows a 1% relative drop from the input model's score, `score>=0.75` sets
a floor; every lossy pass (a miss backs it off, `Pass.weaker`) and the result are held to it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import InputError, UsageError

__all__ = ["ScoreBudget", "ScoreCheck", "load_evaluator", "score_model", "judge_score"]

Evaluator = Callable[[str, Mapping[str, np.ndarray]], float]


@dataclasses.dataclass(frozen=True)
class ScoreBudget:
    """`drop`: the largest relative drop allowed (0.01 for `score=-1%`); `minimum`: a floor."""

    drop: float | None = None
    minimum: float | None = None

    def describe(self) -> str:
        parts = []
        if self.drop is not None:
            parts.append(f"score=-{self.drop * 100:g}%")
        if self.minimum is not None:
            parts.append(f"score>={self.minimum:g}")
        return ",".join(parts)


def load_evaluator(spec: str | Callable) -> Evaluator:
    """`"package.module:function"` → the function (the working folder is importable, as for
    a script beside the model); a callable is returned as it is. Raises UsageError."""
    if callable(spec):
        return spec
    module_name, sep, function_name = str(spec).partition(":")
    if not sep or not module_name or not function_name:
        raise UsageError(f"--evaluator expects package.module:function; got '{spec}'")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UsageError(f"--evaluator module '{module_name}' cannot be imported: {type(error).__name__}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"--evaluator: module '{module_name}' has no function '{function_name}'")
    return function


def score_model(evaluator: Evaluator, model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> float:
    """The evaluator's score of `model` (written to a temporary .onnx file for it)."""
    with tempfile.TemporaryDirectory(prefix="graphopt-eval-") as folder:
        path = Path(folder) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=model.ByteSize() > 1_800_000_000)
        try:
            value = float(evaluator(str(path), dict(inputs)))
        except Exception as error:
            raise InputError(f"the evaluator failed: {type(error).__name__}: {error}") from error
    if not math.isfinite(value):
        raise InputError(f"the evaluator returned {value}, not a finite score")
    return value


def judge_score(reference: float, score: float, budget: ScoreBudget) -> tuple[dict, str | None]:
    """(the report entry, a failure message or None) of `score` against the input's `reference`."""
    entry = {"reference": reference, "score": score,
             "relative_change": (score - reference) / abs(reference) if reference else 0.0, "budget": budget.describe()}
    failure = None
    if budget.drop is not None and score < reference - budget.drop * abs(reference):
        failure = f"score {score:.6g} dropped {100 * (reference - score) / abs(reference or 1):.3g}% from {reference:.6g} (budget -{100 * budget.drop:g}%)"
    elif budget.minimum is not None and score < budget.minimum:
        failure = f"score {score:.6g} < {budget.minimum:g}"
    entry["ok"] = failure is None
    return entry, failure


class ScoreCheck:
    """Holds candidates to a score budget against the input model's score, computed once."""

    def __init__(self, evaluator: Evaluator, budget: ScoreBudget, inputs: Mapping[str, np.ndarray], reference: onnx.ModelProto):
        self.evaluator, self.budget, self.inputs, self._reference_model = evaluator, budget, inputs, reference
        self._reference: float | None = None

    def check(self, candidate: onnx.ModelProto) -> tuple[dict, str | None]:
        """(the report entry, a failure message or None) of `candidate`."""
        if self._reference is None:
            self._reference = score_model(self.evaluator, self._reference_model, self.inputs)
        return judge_score(self._reference, score_model(self.evaluator, candidate, self.inputs), self.budget)
