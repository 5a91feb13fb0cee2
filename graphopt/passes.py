"""The pass contract: what a plugin author subclasses and returns.

A pass is declarative: a `name`, a one-line description (its docstring's first line), typed
`Options` (a dataclass), `lossless` or lossy with a budget, declared ordering, and
`run(graph, ctx) -> PassResult`. It never prints and keeps no state between runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from tqdm import tqdm

from graphopt.errors import PreconditionError

if TYPE_CHECKING:  # the verifier pulls in onnxruntime, which `graphopt passes` must not load
    from graphopt.verify.metrics import Budget

Item = TypeVar("Item")

__all__ = ["Pass", "PassResult", "PassContext", "NoOptions", "keep_unless"]


@dataclasses.dataclass
class NoOptions:
    """A pass without options."""


@dataclasses.dataclass
class PassResult:
    """What a pass did: `changed` only when the graph really changed; `stats` counts rewrites."""

    changed: bool
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PassContext:
    """What a pass may use besides the graph (never global state: make generators from `seed`).

    A lossy pass that chooses how far to go prefers its own `budget` option, then `budget`. A pass
    needing data when no `calibration` was given may use `sample_inputs` (it should warn that
    figures on generated inputs mean little); `fitting_data` picks. A lossy pass judging its own
    result measures `output_slices` too (`metrics.measure_outputs`). Long loops go through
    `ctx.track(...)`, which draws a bar only when `progress` allows.
    """

    opset: int
    seed: int = 0  # the run's random seed
    calibration: dict[str, np.ndarray] | None = None  # N samples per model input, `(N, *input_shape)` arrays
    logger: logging.Logger = dataclasses.field(default_factory=lambda: logging.getLogger("graphopt"))
    model: onnx.ModelProto | None = None  # deprecated alias of `proto(build=False)`; give it to run a pass by hand
    budget: Budget | None = None  # the run's global accuracy budget (`--budget`)
    sample_inputs: dict[str, np.ndarray] | None = None  # the verifier's inputs (`--inputs` or generated); None: verify off
    progress: bool = False  # a terminal, not `--quiet`
    output_slices: tuple = ()  # parts of outputs a budget also holds on (`verify.slices`: declared or detected)
    latency: Any = None  # the graphopt.latency backend every latency decision is timed on (None: host-ort)
    build_proto: Callable[[], onnx.ModelProto] | None = dataclasses.field(default=None, repr=False)

    def proto(self, *, build: bool = True) -> onnx.ModelProto | None:
        """The model the pass received, as a read-only ModelProto with its shapes.

        Weights are inline, or references to the input's data files (`verify.runner.make_session`
        runs either). Built from the graph on the first call, then kept: call it before
        rewriting the graph. With `build=False`, None unless it is at hand without building
        (the proto the graph was just imported from, or the one verification ran).
        """
        if self.model is None and build:
            if self.build_proto is None:
                raise PreconditionError("this pass needs the model as a proto: run it through graphopt.optimize, "
                                        "or give PassContext(model=...)")
            self.model = self.build_proto()
        return self.model

    def track(self, items: Iterable[Item], desc: str, total: int | None = None) -> Iterator[Item]:
        """`items`, with a progress bar named `desc` on stderr (gone when done) when the run shows progress."""
        return iter(tqdm(items, desc=desc, total=total, unit="step", leave=False, disable=not self.progress))

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def fitting_data(self, limit: int | None = None) -> tuple[dict[str, np.ndarray] | None, str]:
        """What a data-aware pass fits to, at most `limit` samples per input: `(calibration, "calibration")`,
        else `(sample_inputs, "sample_inputs")`, else `(None, "none")`."""
        for origin, given in (("calibration", self.calibration), ("sample_inputs", self.sample_inputs)):
            if given:
                return {name: np.asarray(array)[:limit] for name, array in given.items()}, origin
        return None, "none"


class Pass:
    """Base class of every pass. Subclasses set `name`, write a docstring and implement `run`."""

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    # Ordering, declared: this pass must run after / before these passes when both are asked for.
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    # The default-domain opset this pass needs (0: any). The pipeline converts an older model
    # first with the `opset` pass (reported), or stops with exit 2 when it cannot.
    requires_opset: ClassVar[int] = 0
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any | None = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def description(cls) -> str:
        """The first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    def budget(self) -> str | None:
        """A lossy pass's own accuracy budget (`"cos=0.99"`, `"sqnr=30"`), from its `budget` option."""
        return getattr(self.options, "budget", None) or None

    def required_opset(self) -> int:
        """The opset this configured pass needs: `requires_opset`, unless its options ask for more."""
        return self.requires_opset

    def trades_for_speed(self) -> bool:
        """Whether this configured lossy pass gives up accuracy for speed, so its result is kept only
        when its median latency ratio to the pipeline's input is at most 1.0 (`latency.never_slower`).
        Default: a lossy pass whose `never_slower` option is on. A pass whose result computes at the
        same shapes (weights zeroed, not removed) says False."""
        return not self.lossless and bool(getattr(self.options, "never_slower", False))

    def weaker(self, verdict: Any | None, result: PassResult | None = None) -> Pass | None:
        """A weaker configuration of this lossy pass, to try when its result missed a budget.

        The back-off protocol: when the pipeline's verification of a lossy pass fails on
        `--inputs` (`verdict`, a `graphopt.verify.Verdict`, says which outputs missed by how
        much; `result` is what this run returned, its stats saying how far it went), it asks
        `weaker(verdict, result)` and runs what it gets on the same input model, a bounded number of times
        (`pipeline.BACKOFF_STEPS`). Return a new instance (never mutate `self`) that removes
        less (a lower strength, fewer layers), or None when no non-trivial weaker setting is
        left: the pipeline then rolls the pass back and fails, its report listing every try.
        Lossless passes and passes without a strength keep this default: no back-off.
        """
        return None

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass '{self.name}' does not implement run()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


def keep_unless(items: Iterable[Item], reason_against: Callable[[Item], str | None]) -> tuple[list[Item], list[tuple[Item, str]]]:
    """(the items with no reason against them, `(item, reason)` for each of the others), in order:
    what a pass works on and what it leaves alone, each with why, for its report."""
    kept, left = [], []
    for item in items:
        reason = reason_against(item)
        if reason is None:
            kept.append(item)
        else:
            left.append((item, reason))
    return kept, left
