"""The pass manager: runs the configured passes in order, checks and verifies each.

The pipeline holds a `graphopt.model.Model`: each pass runs on the graph the previous pass
left, when it was accepted or did nothing (importing again costs as much as a small pass: 12 s
on a 100k-node graph). A pass that changed the graph is checked on the placeholder form
(`model.check_and_infer`), and exported with its weights only for the onnxruntime session that
verifies it; rolling a pass back is importing the last proto kept (`--keep-going` keeps one
before each pass). Instrumentation (timing, dumps) lives in hook implementations, not here.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from graphopt.convert import release_graph
from graphopt.errors import GraphoptError, InputError, PassError, PreconditionError, UsageError, VerificationError
from graphopt.graph_queries import opset_version
from graphopt.instruments import ModelDumper, PassTimer, call_hook
from graphopt.jsonable import to_jsonable
from graphopt.latency.never_slower import Stage, check_pipeline_result, holds_to_never_slower, host_compare
from graphopt.opset_requirements import (ImplicitConversion, conversion_note, refused_conversion, undo_unused_conversion,
                                         with_opset_conversions)
from graphopt.parameter_names import parameter
from graphopt.model import Model, RunContext, check_and_infer, to_proto
from graphopt.passes import Pass, PassContext, PassResult
from graphopt.registry import Plugins
from graphopt.report import pass_entry
from graphopt.stage_verdict import DEFAULT_LOSSY_BUDGET, backoff_try, judge_pass, options_of, outputs_or_fail, score_check
from graphopt.verify import Budget, SessionError, Verifier

__all__ = ["PipelineSettings", "PipelineOutcome", "run_pipeline", "DEFAULT_LOSSY_BUDGET", "BACKOFF_STEPS"]

logger = logging.getLogger(__name__)

# How many weaker settings (Pass.weaker) a lossy pass that missed its budget gets before it fails.
BACKOFF_STEPS = 4


@dataclasses.dataclass
class PipelineSettings:
    verify: str = "each"  # each | end | off
    keep_going: bool = False
    budget: Budget | None = None
    seed: int = 0
    progress: bool = False
    dump_dir: Path | None = None
    inputs_origin: str = "generated"  # file | calibration | generated: named when the input model cannot run
    keeps_value_info: bool = True  # whether the output will keep the main graph's value_info (sizes count it)
    output_slices: tuple = ()  # parts of outputs budgets also hold on (graphopt.verify.slices), for passes
    evaluator: Any = None  # the user's scoring function (graphopt.verify.evaluator), held to the budget's score terms
    latency: Any = None  # the graphopt.latency backend passes time on (PassContext.latency)
    # The never-slower check's timing (`latency.never_slower`): `compare(models, feeds)`; None turns it off.
    latency_compare: Any = host_compare


@dataclasses.dataclass
class PipelineOutcome:
    model: onnx.ModelProto  # weights "refs" (`model.to_proto`)
    passes: list[dict]
    end_to_end: dict | None
    size: int | None = None  # `model`'s stored size as the last accepted pass's check measured it
    never_slower: dict | None = None  # the never-slower check: timings, stages rolled back


def run_pipeline(
    model: onnx.ModelProto,
    passes: list[Pass],
    plugins: Plugins,
    settings: PipelineSettings,
    verifier: Verifier | None,
    calibration: dict | None = None,
    *,
    model_size: int | None = None,
    context: RunContext = RunContext(),
    reference: bytes | None = None,
    reference_outputs: list[dict] | None = None,
) -> PipelineOutcome:
    """Runs `passes` in order over `model` (checked, shape-inferred); raises VerificationError or
    PassError as docs/design.md says.

    `model_size`: `model`'s stored size, for the first report entry; `context`: where the
    run's weights live outside the proto; `reference`: the model as given, serialised, when at
    hand (the reference session reads it instead of serialising `model` again);
    `reference_outputs`: `model`'s outputs on the verifier's samples when already run (no session then).
    """
    timer = PassTimer()
    instruments: list[Any] = [timer]
    if settings.dump_dir is not None:
        if not settings.dump_dir.is_dir():
            raise UsageError(f"{parameter('dump_dir')} folder does not exist", path=str(settings.dump_dir))
        instruments.append(ModelDumper(settings.dump_dir))
    passes = with_opset_conversions(passes, plugins.registry, model)
    for instrument in instruments:
        plugins.manager.register(instrument)
    try:
        state = _State(model, context, model_size)
        return _Run(model, plugins, settings, verifier, calibration, timer, state, reference, reference_outputs).all(passes)
    finally:
        for instrument in instruments:
            plugins.manager.unregister(instrument)


class _State:
    """The model between passes: its graph once imported, its proto while one is at hand."""

    def __init__(self, proto: onnx.ModelProto, context: RunContext, size: int | None):
        self.proto: onnx.ModelProto | None = proto  # the current model as a proto (weights "refs"), None until needed
        self.envelope, self.context, self.size = proto, context, size
        self.model: Model | None = None
        self.nodes = len(proto.graph.node)

    def graph_model(self) -> Model:
        if self.model is None:
            self.model = Model.imported(self.proto, self.context)
        return self.model

    def as_proto(self) -> onnx.ModelProto:
        if self.proto is None:
            self.proto = to_proto(self.model, "refs")
        return self.proto

    def drop_graph(self) -> None:
        """Forgets the graph (a pass may have left it half-rewritten): the next pass imports the proto."""
        if self.model is not None:
            release_graph(self.model.graph, self.envelope)
        self.model = None


class _Run:
    """One pipeline run: the reference outputs, the state, the report entries."""

    def __init__(self, model, plugins, settings, verifier, calibration, timer, state: _State, reference: bytes | None,
                 reference_outputs: list[dict] | None = None):
        self.original, self.plugins, self.settings, self.verifier = model, plugins, settings, verifier
        self.calibration, self.timer, self.state = calibration, timer, state
        self.verify_each = settings.verify == "each" and verifier is not None
        verified = verifier is not None and settings.verify != "off"
        self.reference_outputs = (reference_outputs or self._reference_outputs(reference)) if verified else None
        self.stage_outputs = self.reference_outputs
        self.sample_inputs = _stacked(verifier.samples) if verifier is not None and verifier.samples else None
        self.reports: list[dict] = []
        self.lossy_ran = False
        self.interface = None
        self.score = score_check(settings, self.original, self.sample_inputs)
        self.stages: list[Stage] = []  # accepted passes' results, for the never-slower check
        self.before_conversion = None  # the model an implicit opset conversion was given
        self.unconverted = None  # (that model, its nodes, its bytes) once the conversion was accepted
        self.feeds = verifier.samples[0] if verifier is not None and verifier.samples else None
        self.timed = settings.latency_compare is not None and self.feeds is not None  # else only the last stage is read

    def _reference_outputs(self, reference: bytes | None):
        try:
            return self.verifier.outputs(reference if reference is not None else self.original)
        except SessionError as error:
            if "NOT_IMPLEMENTED" in str(error):  # no kernel: other inputs cannot help
                raise InputError(f"onnxruntime has no kernel for an op of the input model, so it cannot be verified: {error}; "
                                 f"skip verification with {parameter('verify')} off (onnxruntime runs opset 7 and newer: "
                                 f"put 'opset' first in {parameter('passes')} for an older model)") from error
            if self.settings.inputs_origin == "generated":
                raise InputError(
                    f"onnxruntime cannot run the input model on generated inputs (seed {self.settings.seed}): {error}; "
                    f"give real ones with {parameter('inputs')}, or skip verification with {parameter('verify')} off"
                ) from error
            raise InputError(f"onnxruntime cannot run the input model on the given inputs: {error}") from error

    def all(self, passes: list[Pass]) -> PipelineOutcome:
        # Passes whose output a session reads, the never-slower check keeps, or is the result:
        # exported once, before its check, which takes its placeholder form from that export.
        self.exporting = set(range(len(passes))) if self.verify_each or self.timed else {len(passes) - 1}
        for index, pass_ in enumerate(tqdm(passes, desc="passes", unit="pass", disable=not self.settings.progress, leave=False)):
            entry = self.step(index, pass_)
            logger.info("pass %s: %s %s (%.3fs)", pass_.name, entry["status"], entry.get("details", {}), entry["seconds"])
            self.reports.append(entry)
            if entry["status"] == "accepted":
                self.stages.append(Stage(pass_.name, self.state.as_proto() if self.timed else None, lossless=pass_.lossless,
                                         size=self.state.size, entry=entry, strict=holds_to_never_slower(pass_)))
                if isinstance(pass_, ImplicitConversion):
                    self.unconverted = (self.before_conversion, entry["nodes_before"], entry["bytes_before"])
        if (restored := undo_unused_conversion(self.stages, self.unconverted)) is not None:
            self.state.proto, self.state.nodes, self.state.size = restored
            self.state.drop_graph()
        model = self.state.as_proto()
        if self.stages and self.stages[-1].model is None:
            self.stages[-1].model = model
        kept, size, never_slower = check_pipeline_result(self.original, self.reports[0]["bytes_before"] if self.reports else None,
                                                         self.stages, self.settings.latency_compare, self.feeds)
        if kept is not model:
            model, self.stage_outputs = kept, None  # outputs of the kept model are computed in _end_to_end
        return PipelineOutcome(model, self.reports, self._end_to_end(model), size, never_slower)

    def step(self, index: int, pass_: Pass) -> dict:
        """Runs, checks and verifies one pass; keeps its output or rolls it back. Returns its report entry."""
        state, settings = self.state, self.settings
        self._hook("graphopt_before_pass", index=index, pass_=pass_)
        entry = pass_entry(pass_, self.plugins.registry, state.nodes, state.size) | conversion_note(pass_)
        snapshot = state.as_proto() if settings.keep_going else state.proto
        if isinstance(pass_, ImplicitConversion):  # kept to undo the conversion if nothing builds on it
            self.before_conversion = snapshot or state.as_proto()
        self.before, self.index = state.proto, index
        model = state.graph_model()
        if self.interface is None:
            self.interface = _interface(model.graph)
        result = None
        try:
            result = self._apply(pass_, model)
        except PreconditionError as error:
            if (refused := refused_conversion(pass_, error)) is not None:
                raise refused from error
            entry.update(status="skipped", error=str(error))
            logger.warning("pass '%s' skipped: %s", pass_.name, error)
        except GraphoptError as error:
            if not settings.keep_going:
                self._hook("graphopt_after_pass", index=index, pass_=pass_, result=None, accepted=False)
                raise
            entry.update(status="failed", error=str(error))
            logger.warning("%s; going on without it (--keep-going)", error)
        if result is not None:
            entry.update(changed=result.changed, details=to_jsonable(result.stats), status="accepted" if result.changed else "unchanged")
        if entry["status"] == "accepted":
            candidate, pass_, result = self._verified(index, pass_, result, entry)
            if entry["status"] == "accepted" and (candidate is not None or not self.verify_each):
                self.lossy_ran = self.lossy_ran or not pass_.lossless
                candidate = candidate if candidate is not None else self._pending_proto
                state.proto, state.nodes = candidate, len(state.graph_model().graph.nodes)
                state.size = entry.pop("_size")
                if state.context.weights_dir is not None:  # a graph mapping weights must not outlive the pass
                    state.as_proto()
                    state.drop_graph()
        entry.pop("_size", None)
        if entry["status"] not in ("accepted", "unchanged") and snapshot is not None:
            state.proto = snapshot
            state.drop_graph()
        self._hook("graphopt_after_pass", index=index, pass_=pass_, result=result, accepted=entry["status"] == "accepted")
        entry["seconds"] = round(self.timer.seconds.get(index, 0.0), 4)
        entry["nodes_after"] = state.nodes
        entry["bytes_after"] = state.size
        return entry

    def _apply(self, pass_: Pass, model: Model) -> PassResult:
        settings = self.settings
        ctx = PassContext(
            opset=opset_version(model.graph) or 0,
            seed=settings.seed,
            calibration=self.calibration,
            budget=settings.budget,
            sample_inputs=self.sample_inputs,
            progress=settings.progress,
            output_slices=settings.output_slices,
            latency=settings.latency,
            logger=logging.getLogger(f"graphopt.pass.{pass_.name}"),
            model=self.state.proto,
            build_proto=lambda: to_proto(model, "refs"),
        )
        try:
            result = pass_.run(model.graph, ctx)
        except (PreconditionError, GraphoptError):
            raise
        except Exception as error:
            raise PassError(f"pass '{pass_.name}' raised {type(error).__name__}: {error}", pass_name=pass_.name) from error
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{pass_.name}' returned {type(result).__name__}, not a graphopt.PassResult", pass_name=pass_.name)
        if result.changed:
            self._checked(pass_, model)
        return result

    def _checked(self, pass_: Pass, model: Model) -> None:
        try:
            exported = to_proto(model, "refs") if self.index in self.exporting else None
            size = check_and_infer(model, value_info=self.settings.keeps_value_info, exported=exported)
        except InputError as error:
            raise PassError(f"pass '{pass_.name}' produced an invalid model: {error.message}", pass_name=pass_.name) from error
        except Exception as error:
            raise PassError(f"pass '{pass_.name}' produced a graph that cannot be exported: {type(error).__name__}: {error}",
                            pass_name=pass_.name) from error
        if _interface(model.graph) != self.interface:
            raise PassError(f"pass '{pass_.name}' changed the model's inputs or outputs", pass_name=pass_.name)
        self._pending_size, self._pending_proto = size, exported

    def _verified(self, index: int, pass_: Pass, result: PassResult, entry: dict):
        """(the pass's output as a proto when verification ran and it held, else None; the pass
        that ran last, a weaker one after back-off; its result). On failure, marks `entry`
        rolled back, or raises VerificationError without --keep-going."""
        entry["_size"] = self._pending_size
        if not self.verify_each:
            return None, pass_, result
        state, verifier, settings = self.state, self.verifier, self.settings
        previous = self.before if self.before is not None else self.original
        candidate = self._pending_proto if self._pending_proto is not None else to_proto(state.model, "refs")
        verdict, entry["verification"], candidate_outputs, message = judge_pass(
            verifier, self.stage_outputs, self.reference_outputs, self.original, previous, candidate, pass_, settings, self.score)
        tries = []  # the back-off protocol (Pass.weaker): a weaker setting, a bounded number of times
        while not verdict.ok and len(tries) < BACKOFF_STEPS and (weaker := pass_.weaker(verdict, result)) is not None:
            tries.append(backoff_try(pass_, result, verdict))
            logger.info("pass %s missed its budget (%s); trying a weaker setting", pass_.name, verdict.summary())
            pass_ = weaker
            state.proto = previous  # the weaker setting runs on the model the pass was given
            state.drop_graph()
            result = self._apply(pass_, state.graph_model())
            entry.update(changed=result.changed, details=to_jsonable(result.stats), options=options_of(pass_))
            if not result.changed:
                break
            entry["_size"] = self._pending_size
            candidate = self._pending_proto if self._pending_proto is not None else to_proto(state.model, "refs")
            verdict, entry["verification"], candidate_outputs, message = judge_pass(
                verifier, self.stage_outputs, self.reference_outputs, self.original, previous, candidate, pass_, settings,
                self.score)
        if tries:
            entry["tries"] = tries + [backoff_try(pass_, result, verdict)]
        if not result.changed:
            entry.update(status="unchanged", verification=None)
            entry.pop("_size", None)
            return None, pass_, result
        if verdict.ok:
            self.stage_outputs = candidate_outputs
            return candidate, pass_, result
        entry.update(status="rolled_back", rolled_back=True)
        if not settings.keep_going:
            self._hook("graphopt_after_pass", index=index, pass_=pass_, result=result, accepted=False)
            entry["seconds"] = round(self.timer.seconds.get(index, 0.0), 4)
            entry.pop("_size", None)
            self.reports.append(entry)
            raise VerificationError(message, report={"passes": self.reports})
        logger.warning("%s; rolled back (--keep-going)", message)
        return None, pass_, result

    def _end_to_end(self, model: onnx.ModelProto) -> dict | None:
        if self.reference_outputs is None:
            return None
        verifier = self.verifier
        budget = (self.settings.budget or DEFAULT_LOSSY_BUDGET) if self.lossy_ran else None
        final_outputs = (self.stage_outputs if self.verify_each and self.stage_outputs is not None
                         else outputs_or_fail(verifier, model, "the optimized model"))
        verdict = verifier.judge(self.reference_outputs, final_outputs, budget=budget)
        score = self.score if self.lossy_ran else None
        if verdict.ok and score is not None:
            score_entry, failure = score.check(model)
            if failure:
                verdict = dataclasses.replace(verdict, ok=False, failures=[f"evaluator: {failure}"] + verdict.failures)
        if not verdict.ok:
            verdict.first_divergence = verifier.localize(self.original, model, budget=budget)
            if budget is not None:
                verdict.worst_tensors = verifier.worst_tensors(self.original, model)
            worst = (f"; worst tensor '{verdict.worst_tensors[0]['tensor']}' (SQNR {verdict.worst_tensors[0]['sqnr_db']:.1f} dB,"
                     " all in the report)" if verdict.worst_tensors else "")
            raise VerificationError(f"end-to-end verification failed: {verdict.summary()}{worst}",
                                    report={"passes": self.reports, "verification": verdict.to_dict()})
        end_to_end = verdict.to_dict()
        if score is not None:
            end_to_end["score"] = score_entry
        return end_to_end

    def _hook(self, name: str, **kwargs) -> None:
        call_hook(self.plugins, name, model=self.state.as_proto, **kwargs)


def _interface(graph) -> tuple[list[str], list[str]]:
    """The names of a graph's inputs and outputs, which no pass may change."""
    return [t.name for t in graph.inputs], [t.name for t in graph.outputs]


def _stacked(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The verifier's samples back in the `(N, *shape)` form passes receive calibration in."""
    return {name: np.stack([sample[name] for sample in samples]) for name in samples[0]}
