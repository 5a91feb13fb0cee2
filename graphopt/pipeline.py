"""The pass manager: configures passes, checks their declared order, runs and verifies each.

The pipeline holds a `ModelProto`; rolling a pass back is keeping the previous one. Each pass
runs on an IR graph of that model: the graph the previous pass left, when it was accepted or
did nothing (importing again costs as much as a small pass: 12 s on a 100k-node graph), else
a fresh import. Instrumentation (timing, dumps) lives in hook implementations, not in this loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from graphopt import ir
from graphopt.parameter_names import parameter
from graphopt.errors import GraphoptError, InputError, PassError, PluginError, PreconditionError, UsageError, VerificationError
from graphopt.hookspecs import hookimpl
from graphopt.jsonable import to_jsonable
from graphopt.latency.never_slower import Stage, check_pipeline_result, host_compare
from graphopt.model_io import external_data_dir, inferred_and_checked, save_model
from graphopt.opset_requirements import conversion_note, refused_conversion, with_opset_conversions
from graphopt.options import build_options
from graphopt.passes import Pass, PassContext, PassResult
from graphopt.registry import PassRegistry, Plugins
from graphopt.summary import model_bytes
from graphopt.verify import Budget, SessionError, Verifier

__all__ = ["configure_passes", "PipelineSettings", "PipelineOutcome", "run_pipeline", "DEFAULT_LOSSY_BUDGET", "BACKOFF_STEPS"]

logger = logging.getLogger(__name__)

# What a lossy pass is held to when neither it nor the user set a budget.
DEFAULT_LOSSY_BUDGET = Budget(cos=0.99)
# How many weaker settings (Pass.weaker) a lossy pass that missed its budget gets before it fails.
BACKOFF_STEPS = 4


def configure_passes(
    registry: PassRegistry,
    names: list[str],
    options: dict[str, dict[str, Any]] | None = None,
    text_options: dict[str, dict[str, str]] | None = None,
) -> list[Pass]:
    """Pass instances for `names`, options from typed values (API, recipe) then text (`--set`)."""
    options, text_options = options or {}, text_options or {}
    if not names:
        raise UsageError(f"no passes given: {parameter('passes')} names none")
    for pass_name in list(options) + list(text_options):
        if pass_name not in names:
            registry.get(pass_name)  # an unknown pass is the better error
            raise UsageError(f"options given for pass '{pass_name}', which is not in {parameter('passes')} ({','.join(names)})")
    configured = []
    for name in names:
        cls = registry.get(name)
        typed = build_options(name, cls.Options, options.get(name, {}), text_options.get(name, {}))
        configured.append(cls(typed))
    _check_declared_order(configured)
    return configured


def _check_declared_order(passes: list[Pass]) -> None:
    positions: dict[str, list[int]] = {}
    for index, pass_ in enumerate(passes):
        positions.setdefault(pass_.name, []).append(index)
    for index, pass_ in enumerate(passes):
        for earlier in pass_.after:
            if any(other > index for other in positions.get(earlier, ())):
                raise UsageError(f"pass '{pass_.name}' must run after '{earlier}' (declared by '{pass_.name}'); reorder {parameter('passes')}")
        for later in pass_.before:
            if any(other < index for other in positions.get(later, ())):
                raise UsageError(f"pass '{pass_.name}' must run before '{later}' (declared by '{pass_.name}'); reorder {parameter('passes')}")


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
    model: onnx.ModelProto
    passes: list[dict]
    end_to_end: dict | None
    size: int | None = None  # `model`'s stored size (`PipelineSettings.keeps_value_info`), when a pass ran
    never_slower: dict | None = None  # the never-slower check: timings, stages rolled back


class _PassTimer:
    """Times passes through the before/after hooks."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.seconds: dict[int, float] = {}

    @hookimpl
    def graphopt_before_pass(self, index):
        self.started[index] = time.perf_counter()

    @hookimpl
    def graphopt_after_pass(self, index):
        self.seconds[index] = time.perf_counter() - self.started.pop(index, time.perf_counter())


class _ModelDumper:
    """Writes the model after each pass as `NN_pass.onnx` (`--dump-dir`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def graphopt_after_pass(self, index, pass_, model):
        save_model(model, self.folder / f"{index + 1:02d}_{pass_.name}.onnx")


def run_pipeline(
    model: onnx.ModelProto,
    passes: list[Pass],
    plugins: Plugins,
    settings: PipelineSettings,
    verifier: Verifier | None,
    calibration: dict | None = None,
    *,
    model_size: int | None = None,
) -> PipelineOutcome:
    """Runs `passes` in order over `model`; raises VerificationError or PassError as DESIGN.md says.

    `model_size`: `model`'s stored size (`summary.model_bytes` with the settings' value_info
    choice) when the caller knows it; measured otherwise.
    """
    timer = _PassTimer()
    instruments: list[Any] = [timer]
    if settings.dump_dir is not None:
        if not settings.dump_dir.is_dir():
            raise UsageError(f"{parameter('dump_dir')} folder does not exist", path=str(settings.dump_dir))
        instruments.append(_ModelDumper(settings.dump_dir))
    passes = with_opset_conversions(passes, plugins.registry, model)
    for instrument in instruments:
        plugins.manager.register(instrument)
    try:
        return _run(model, passes, plugins, settings, verifier, calibration, timer, model_size)
    finally:
        for instrument in instruments:
            plugins.manager.unregister(instrument)


def _run(model, passes, plugins, settings, verifier, calibration, timer, model_size) -> PipelineOutcome:
    original = model
    verify_each = settings.verify == "each" and verifier is not None
    try:
        reference_outputs = verifier.outputs(model) if verifier is not None and settings.verify != "off" else None
    except SessionError as error:
        if settings.inputs_origin == "generated":
            raise InputError(
                f"onnxruntime cannot run the input model on generated inputs (seed {settings.seed}): {error}; "
                f"give real ones with {parameter('inputs')}, or skip verification with {parameter('verify')} off"
            ) from error
        raise InputError(f"onnxruntime cannot run the input model on the given inputs: {error}") from error
    stage_outputs = reference_outputs
    sample_inputs = _stacked(verifier.samples) if verifier is not None and verifier.samples else None
    score = _score_check(settings, original, sample_inputs)
    reports, lossy_ran, stages = [], False, []
    live_graph = None  # the IR of `model` the last pass left, when it is still that
    # model_size is model_bytes(model), measured once per model (sizing serialises it all) unless given
    for index, pass_ in enumerate(tqdm(passes, desc="passes", unit="pass", disable=not settings.progress, leave=False)):
        _call_hook(plugins, "graphopt_before_pass", index=index, pass_=pass_, model=model)
        if model_size is None:
            model_size = model_bytes(model, value_info=settings.keeps_value_info)
        entry = _entry(pass_, plugins.registry, model, model_size) | conversion_note(pass_)
        before = model
        result, candidate, graph, candidate_size, verdict = None, model, live_graph, None, None
        live_graph = None  # the pass may leave it half-rewritten, whatever happens next
        try:
            result, candidate, graph, candidate_size = _apply(pass_, model, graph, settings, calibration, sample_inputs)
        except PreconditionError as error:
            if (refused := refused_conversion(pass_, error)) is not None:
                raise refused from error
            entry.update(status="skipped", error=str(error))
            logger.warning("pass '%s' skipped: %s", pass_.name, error)
        except GraphoptError as error:
            if not settings.keep_going:
                _call_hook(plugins, "graphopt_after_pass", index=index, pass_=pass_, model=model, result=None, accepted=False)
                raise
            entry.update(status="failed", error=str(error))
            logger.warning("%s; going on without it (--keep-going)", error)
        if result is not None:
            entry.update(changed=result.changed, details=to_jsonable(result.stats))
            entry["status"] = "accepted" if result.changed else "unchanged"
        if result is not None and result.changed and verify_each:
            verdict, entry["verification"], candidate_outputs, message = _judge(
                verifier, stage_outputs, reference_outputs, original, model, candidate, pass_, settings, score)
            tries = []  # the back-off protocol (Pass.weaker): a weaker setting, a bounded number of times
            while not verdict.ok and len(tries) < BACKOFF_STEPS and (weaker := pass_.weaker(verdict, result)) is not None:
                tries.append(_try(pass_, result, verdict))
                logger.info("pass %s missed its budget (%s); trying a weaker setting", pass_.name, verdict.summary())
                pass_ = weaker
                result, candidate, graph, candidate_size = _apply(pass_, model, None, settings, calibration, sample_inputs)
                entry.update(changed=result.changed, details=to_jsonable(result.stats), options=_options_of(pass_))
                if not result.changed:
                    break
                verdict, entry["verification"], candidate_outputs, message = _judge(
                    verifier, stage_outputs, reference_outputs, original, model, candidate, pass_, settings, score)
            if tries:
                entry["tries"] = tries + [_try(pass_, result, verdict)]
            if not result.changed:
                entry.update(status="unchanged", verification=None)
                candidate, verdict = model, None
        if verdict is not None:
            if not verdict.ok:
                entry.update(status="rolled_back", rolled_back=True)
                if not settings.keep_going:
                    _call_hook(plugins, "graphopt_after_pass", index=index, pass_=pass_, model=model, result=result, accepted=False)
                    entry["seconds"] = round(timer.seconds.get(index, 0.0), 4)
                    reports.append(entry)
                    raise VerificationError(message, report={"passes": reports})
                logger.warning("%s; rolled back (--keep-going)", message)
                candidate = model
            else:
                stage_outputs = candidate_outputs
        if entry["status"] == "accepted":
            lossy_ran = lossy_ran or not pass_.lossless
            model = candidate
        if entry["status"] in ("accepted", "unchanged"):
            live_graph = graph
        _call_hook(plugins, "graphopt_after_pass", index=index, pass_=pass_, model=model, result=result,
                   accepted=entry["status"] == "accepted")
        entry["seconds"] = round(timer.seconds.get(index, 0.0), 4)
        entry["nodes_after"] = len(model.graph.node)
        if model is not before:
            model_size = candidate_size if candidate_size is not None else model_bytes(model, value_info=settings.keeps_value_info)
        entry["bytes_after"] = model_size
        logger.info("pass %s: %s %s (%.3fs)", pass_.name, entry["status"], entry.get("details", {}), entry["seconds"])
        reports.append(entry)
        if entry["status"] == "accepted":
            stages.append(Stage(pass_.name, model, lossless=pass_.lossless, size=model_size, entry=entry))

    feeds = verifier.samples[0] if verifier is not None and verifier.samples else None
    kept, model_size, never_slower = check_pipeline_result(original, reports[0]["bytes_before"] if reports else None,
                                                           stages, settings.latency_compare, feeds)
    if kept is not model:
        model, stage_outputs = kept, None  # outputs of the kept model are computed below

    end_to_end = None
    if reference_outputs is not None:
        budget = (settings.budget or DEFAULT_LOSSY_BUDGET) if lossy_ran else None
        final_outputs = stage_outputs if verify_each and stage_outputs is not None else _outputs_or_fail(verifier, model, "the optimized model")
        verdict = verifier.judge(reference_outputs, final_outputs, budget=budget)
        if verdict.ok and lossy_ran and score is not None:
            score_entry, failure = score.check(model)
            if failure:
                verdict = dataclasses.replace(verdict, ok=False, failures=[f"evaluator: {failure}"] + verdict.failures)
        if not verdict.ok:
            verdict.first_divergence = verifier.localize(original, model, budget=budget)
            end_to_end = verdict.to_dict()
            raise VerificationError(f"end-to-end verification failed: {verdict.summary()}", report={"passes": reports, "verification": end_to_end})
        end_to_end = verdict.to_dict()
        if lossy_ran and score is not None:
            end_to_end["score"] = score_entry
    return PipelineOutcome(model, reports, end_to_end, model_size, never_slower)


def _call_hook(plugins: Plugins, name: str, **kwargs) -> None:
    """Calls every implementation of an instrumentation hook; one that raises is named.

    pluggy would let the exception through bare, and the user would see an internal error
    instead of which plugin failed.
    """
    caller = getattr(plugins.manager.hook, name)
    for impl in reversed(caller.get_hookimpls()):  # pluggy's order: last registered first
        arguments = {key: kwargs[key] for key in impl.argnames}
        try:
            impl.function(**arguments)
        except GraphoptError:
            raise
        except Exception as error:
            raise PluginError(f"plugin '{impl.plugin_name}' failed in {name}: {type(error).__name__}: {error}") from error


def _stacked(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The verifier's samples back in the `(N, *shape)` form passes receive calibration in."""
    return {name: np.stack([sample[name] for sample in samples]) for name in samples[0]}


def _apply(
    pass_: Pass, model: onnx.ModelProto, graph, settings: PipelineSettings, calibration, sample_inputs
) -> tuple[PassResult, onnx.ModelProto, object, int | None]:
    """(what the pass did, the model it produced, its IR graph if still usable, else None, the
    model's stored size when known from its checking)."""
    if graph is None:
        graph = ir.import_graph(model)
    ctx = PassContext(
        opset=ir.opset_version(graph) or 0,
        seed=settings.seed,
        calibration=calibration,
        budget=settings.budget,
        sample_inputs=sample_inputs,
        progress=settings.progress,
        output_slices=settings.output_slices,
        latency=settings.latency,
        logger=logging.getLogger(f"graphopt.pass.{pass_.name}"),
        model=model,
    )
    try:
        result = pass_.run(graph, ctx)
    except (PreconditionError, GraphoptError):
        raise
    except Exception as error:
        raise PassError(f"pass '{pass_.name}' raised {type(error).__name__}: {error}", pass_name=pass_.name) from error
    if not isinstance(result, PassResult):
        raise PassError(f"pass '{pass_.name}' returned {type(result).__name__}, not a graphopt.PassResult", pass_name=pass_.name)
    keep = external_data_dir(model) is None  # a graph mapping weights must not outlive the pass
    if not result.changed:
        if not keep:
            ir.release_graph(graph, model)
        return result, model, graph if keep else None, None
    try:
        candidate, size = inferred_and_checked(ir.export_model(graph, model), value_info=settings.keeps_value_info)
        if keep:
            ir.apply_inferred_shapes(graph, candidate)  # as a fresh import of `candidate` would have them
        else:
            ir.release_graph(graph, model)
    except InputError as error:
        raise PassError(f"pass '{pass_.name}' produced an invalid model: {error.message}", pass_name=pass_.name) from error
    except Exception as error:
        raise PassError(f"pass '{pass_.name}' produced a graph that cannot be exported: {type(error).__name__}: {error}", pass_name=pass_.name) from error
    _check_interface(pass_, model, candidate)
    return result, candidate, graph if keep else None, size


def _check_interface(pass_: Pass, before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """A pass must never change the model's input or output names, types or shapes."""
    def interface(model):
        overridable = model.ir_version >= 4
        initializers = {t.name for t in model.graph.initializer}
        inputs = [(v.name, v.type.SerializeToString()) for v in model.graph.input if overridable or v.name not in initializers]
        return inputs, [(v.name, v.type.SerializeToString()) for v in model.graph.output]
    if interface(before) != interface(after):
        raise PassError(f"pass '{pass_.name}' changed the model's inputs or outputs", pass_name=pass_.name)


def _budget_for(pass_: Pass, settings: PipelineSettings) -> Budget | None:
    if pass_.lossless:
        return None
    own = Budget.parse(pass_.budget())
    if own is None:
        return settings.budget or DEFAULT_LOSSY_BUDGET
    return own


def _score_check(settings: PipelineSettings, original: onnx.ModelProto, sample_inputs):
    """The user evaluator's check (`--evaluator`, `--budget score=...`), or None."""
    score_budget = settings.budget.score_budget() if settings.budget is not None else None
    if settings.evaluator is None or score_budget is None or sample_inputs is None:
        return None
    from graphopt.verify.evaluator import ScoreCheck

    return ScoreCheck(settings.evaluator, score_budget, sample_inputs, original)


def _judge(verifier, stage_outputs, reference_outputs, original, model, candidate, pass_, settings, score=None):
    """(verdict, its report entry, the candidate's outputs, the failure message) of one pass's result."""
    budget = _budget_for(pass_, settings)
    verdict, candidate_outputs = _verify(verifier, stage_outputs, model, candidate, pass_, budget)
    report = verdict.to_dict()
    message = _failure_message(pass_, verdict)
    if verdict.ok and not pass_.lossless:
        # The global budget is what the lossy passes keep *together*: a pass within its
        # own budget that takes the model as a whole outside it goes back, so with
        # --keep-going the passes that fit are kept and the end-to-end check holds.
        overall = settings.budget or DEFAULT_LOSSY_BUDGET
        so_far = verifier.judge(reference_outputs, candidate_outputs, budget=overall)
        report["end_to_end_so_far"] = so_far.to_dict()
        if not so_far.ok:
            so_far.first_divergence = verifier.localize(original, candidate, budget=overall)
            report.update(ok=False, end_to_end_so_far=so_far.to_dict())
            verdict = so_far
            message = (f"pass '{pass_.name}' would take the model outside the end-to-end budget "
                       f"({overall.describe()}): {so_far.summary()}")
    if verdict.ok and not pass_.lossless and score is not None:
        report["score"], failure = score.check(candidate)
        if failure:
            verdict = dataclasses.replace(verdict, ok=False, failures=[f"evaluator: {failure}"] + verdict.failures)
            report["ok"] = False
            message = f"pass '{pass_.name}' misses the evaluator's budget: {failure}"
    return verdict, report, candidate_outputs, message


def _try(pass_: Pass, result: PassResult, verdict) -> dict:
    """One setting the back-off tried: its options, whether it changed the model, how it did."""
    entry = {"options": _options_of(pass_), "changed": result.changed}
    if verdict is not None and result.changed:
        entry.update(ok=verdict.ok, failures=verdict.failures[:3],
                     worst_cosine={name: metrics.get("cosine") for name, metrics in verdict.outputs.items()})
    return to_jsonable(entry)


def _options_of(pass_: Pass) -> dict:
    # Names from the dataclass: describe_options would parse the source for help text.
    return to_jsonable({field.name: getattr(pass_.options, field.name) for field in dataclasses.fields(pass_.options)})


def _verify(verifier, stage_outputs, model, candidate, pass_, budget):
    candidate_outputs = _outputs_or_fail(verifier, candidate, f"the model pass '{pass_.name}' produced", pass_.name)
    verdict = verifier.judge(stage_outputs, candidate_outputs, budget=budget)
    if not verdict.ok:
        verdict.first_divergence = verifier.localize(model, candidate, budget=budget)
    return verdict, candidate_outputs


def _outputs_or_fail(verifier, model, what, pass_name="verify"):
    try:
        return verifier.outputs(model)
    except SessionError as error:
        raise PassError(f"onnxruntime cannot run {what}: {error}", pass_name=pass_name) from error


def _failure_message(pass_: Pass, verdict) -> str:
    message = f"pass '{pass_.name}' failed verification: {verdict.summary()}"
    where = verdict.first_divergence
    if where:
        message += f"; first divergence at node '{where['node']}' ({where['op']}, tensor '{where['tensor']}')"
    return message


def _entry(pass_: Pass, registry: PassRegistry, model: onnx.ModelProto, model_size: int) -> dict:
    return {
        "name": pass_.name,
        "plugin": registry.plugin_of(pass_.name) if pass_.name in registry else None,
        "lossless": pass_.lossless,
        "options": _options_of(pass_),
        "status": "unchanged",
        "changed": False,
        "rolled_back": False,
        "details": {},
        "verification": None,
        "nodes_before": len(model.graph.node),
        "bytes_before": model_size,
    }
