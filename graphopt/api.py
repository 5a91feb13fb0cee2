"""The Python API: `graphopt.optimize(model, passes=[...]) -> Result` with `.model` and `.report`.

Nothing here touches the disk unless asked (a path to read, `dump_dir`), prints, or keeps
global state; logging goes through `logging.getLogger("graphopt")`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper

from graphopt import __version__, latency
from graphopt.convert import constant_placeholders
from graphopt.emit.write import emit_model
from graphopt.errors import InputError, UsageError, VerificationError
from graphopt.external_data import external_folder, materialize_external_data, spill_folder
from graphopt.latency.never_slower import check_on
from graphopt.opset_requirements import pass_warnings
from graphopt.model import RunContext, checked_input
from graphopt.model_io import read_model, save_model
from graphopt.pipeline import PipelineSettings, run_pipeline
from graphopt.proto_walk import PROTOBUF_LIMIT, copy_model, iter_tensors, serialized_bytes, tensor_nbytes
from graphopt.registry import configure_passes, load_registry
from graphopt.report import REPORT_SCHEMA, growth_warnings, run_report
from graphopt.summary import model_bytes, summarize
from graphopt.verify import Budget, Verifier, generate_feeds, load_feeds, lossless_floor, split_samples
from graphopt.verify.feeds import check_feeds
from graphopt.verify.evaluator import load_evaluator
from graphopt.verify.slices import output_slices, parse_slices
from graphopt.verify.input_shapes import freeze_input_shapes, run_shapes
from graphopt.output_annotations import annotated_names, keep_given_value_info, repaired_output_shapes
from graphopt.selection_head import agreement, attach_head, split_head
from graphopt.writable import require_writable_folder
from graphopt.shaped_summary import count_macs_at, leaves_dynamic
from graphopt.parameter_names import parameter

__all__ = ["Result", "optimize", "optimize_to_file", "prepare_model", "prepare_feeds", "REPORT_SCHEMA"]

_VERIFY_MODES = ("each", "end", "off")
# Generated samples a run with a lossy pass verifies on (a lossless one needs one). A pass that
# fits to data holds a quarter out, and a plan is judged on inputs it did not fit: fitted and
# judged on one sample, first tries met the budget there and missed it on the next input
# (PP-OCRv4 det cos 0.012, an audio encoder 0.861: docs/benchmarks.md, "generated samples").
GENERATED_SAMPLES = 8


@dataclasses.dataclass
class Result:
    model: onnx.ModelProto
    report: dict


def optimize(
    model: onnx.ModelProto | str | os.PathLike,
    passes: Iterable[str] | str = ("cleanup",),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    calibration: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    verify: str = "each",
    budget: str | None = None,
    input_shapes: Mapping[str, Iterable[int]] | None = None,
    keep_going: bool = False,
    seed: int = 0,
    plugins: Iterable[Any] = (),
    dump_dir: str | os.PathLike | None = None,
    set_options: Mapping[str, Mapping[str, str]] | None = None,
    progress: bool = False,
    budget_slices: Iterable[str] | str | None = None,
    evaluator: Any = None,
    freeze_shapes: bool = False,
    latency_on: str | None = None,
    never_slower: bool = True,
) -> Result:
    """Runs `passes` over `model` and verifies the result in onnxruntime; the keywords are the
    `graphopt optimize` flags of the same names (docs/cli.md).

    `inputs` / `calibration`: `{input name: (N, *shape) array}`, an `.npz` path, a folder of
    samples or an iterable of `{input name: array}`. `plugins`: extra plugin objects besides the
    `graphopt` entry-point group's. `set_options` takes option values as text, as `--set` does.
    Dims neither fixed nor in `input_shapes` are chosen and confirmed (`verify.input_shapes`; the
    report's `verification.shapes` says why) and stay dynamic unless `freeze_shapes`.
    `never_slower`: time the result against the input on the `latency_on` backend and roll back
    the lossless stages that made it slower (the report's `never_slower`).
    `evaluator`: `function(model_path, inputs) -> score` or `"package.module:function"`. Raises
    `graphopt.GraphoptError` subclasses (see `graphopt.errors`).
    """
    with _optimized(model, passes, options, inputs=inputs, calibration=calibration, verify=verify, budget=budget,
                    input_shapes=input_shapes, keep_going=keep_going, seed=seed, plugins=plugins, dump_dir=dump_dir,
                    set_options=set_options, progress=progress, freeze_shapes=freeze_shapes, latency_on=latency_on,
                    never_slower=never_slower, budget_slices=budget_slices, evaluator=evaluator) as (final, report, spill):
        # Under 2 GiB the result is self-contained, as docs/design.md promises; over it, its
        # weights stay in the input's data files (by absolute path) and `save_model` copies
        # them. What passes spilled comes back in memory: the spill folder goes with the block.
        # No spill folder: the input's weights were all in memory, and so are the result's.
        if spill is not None and not _read_in_if_it_fits(final):
            materialize_external_data(final, only_in=spill)
        return Result(final, report)


def optimize_to_file(
    model: onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike,
    passes: Iterable[str] | str = ("cleanup",),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    external_data: bool = False,
    **settings: Any,
) -> dict:
    """`optimize`, then the result written to `output` (atomic, checked); returns the report.

    Takes `optimize`'s keywords, and `emit` (`"ort"`, `"tflite"`) with `emit_precision` (tflite:
    `"fp32"`, `"fp16"`, `"int8"`, `"int8-mixed"`) to write for that runtime (graphopt/emit).
    Weights still in files are streamed into the output's data file, never gathered in memory
    (the way to write a model of several GiB); `external_data` writes one even when it would fit.
    """
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    require_writable_folder(Path(output), "output")  # before any pass runs, not after
    emit, precision = settings.pop("emit", None) or "onnx", settings.pop("emit_precision", "fp32")
    if emit == "tflite" and settings.get("latency_on") is None:
        settings["latency_on"] = "host-litert"  # decisions timed where the flatbuffer will run
    with _optimized(model, passes, options, **settings) as (final, report, _):
        if emit != "onnx":  # verified in its runtime, then written (graphopt/emit)
            _read_in_if_it_fits(final)
            report["emit"] = emit_model(final, output, emit, precision, settings)
            return report
        if not external_data:
            _read_in_if_it_fits(final)
        written = save_model(final, output, external_data=external_data, source=source)
        data_file = written.with_name(f"{written.name}.data")
        report["output"]["bytes"] = written.stat().st_size + (data_file.stat().st_size if data_file.exists() else 0)
        return report


def _read_in_if_it_fits(model: onnx.ModelProto) -> bool:
    """Reads every external weight of `model` (the run's own) into it, in place, if that fits in a proto."""
    if external_folder(model) is not None and sum(map(tensor_nbytes, iter_tensors(model))) + model.ByteSize() < PROTOBUF_LIMIT:
        materialize_external_data(model)
        return True
    return False


@contextlib.contextmanager
def _optimized(
    model, passes, options, *, inputs=None, calibration=None, verify="each", budget=None, input_shapes=None,
    keep_going=False, seed=0, plugins=(), dump_dir=None, set_options=None, progress=False, freeze_shapes=False,
    latency_on=None, never_slower=True, budget_slices=None, evaluator=None,
) -> Iterator[tuple[onnx.ModelProto, dict, Path | None]]:
    """(the optimized model, the report, the spill folder or None), valid for the block: weights may be in the spill folder."""
    if verify not in _VERIFY_MODES:
        raise UsageError(f"verify must be one of {', '.join(_VERIFY_MODES)}; got '{verify}'")
    names = [p.strip() for p in passes.split(",")] if isinstance(passes, str) else list(passes)
    names = [name for name in names if name]
    global_budget = Budget.parse(budget)
    loaded = load_registry(plugins)
    configured = configure_passes(loaded.registry, names, _nested(options), _nested(set_options))
    timer = latency.backend(latency_on, loaded)
    prepared = _prepared(model)
    source = prepared.running
    model_warnings = list(prepared.warnings)
    shapes = {name: tuple(int(d) for d in dims) for name, dims in (input_shapes or {}).items()}
    calibration_feeds = prepare_feeds(calibration, source, option=parameter("calibration")) if calibration is not None else None
    feeds = prepare_feeds(inputs, source) if inputs is not None else calibration_feeds
    # The run that confirms chosen shapes reads the model as given, as the reference session
    # would: its outputs are the reference's when on the same feeds.
    confirmation: dict = {"serialised": prepared.data}
    chosen = run_shapes(source, shapes, feeds, feeds_from="inputs" if inputs is not None else "calibration", seed=seed,
                        confirm=verify != "off" or freeze_shapes, confirmation=confirmation)
    if freeze_shapes:
        prepared = _prepared(freeze_input_shapes(prepared.pristine(), {name: c.shape for name, c in chosen.items()}))
        prepared.warnings = model_warnings
        source = prepared.running
    # outputs a selection makes are judged on what it selects from (selection_head.py)
    lossy = not all(p.lossless for p in configured)
    trunk, head = split_head(source) if verify != "off" and lossy else (source, None)
    verifier = None
    if verify != "off":
        if feeds is None:
            feeds = generate_feeds(source, {name: c.shape for name, c in chosen.items()}, seed=seed,
                                   samples=GENERATED_SAMPLES if lossy else 1)
        verifier = Verifier(split_samples(feeds), output_slices(trunk, budget_slices, feeds), lossless_floor(source))
    reference_outputs = _confirmed_outputs(confirmation, verifier.samples) if verifier and not freeze_shapes else None
    confirmation.clear()  # its onnxruntime session goes now
    origin = "file" if inputs is not None else "calibration" if calibration is not None else "generated"
    settings = PipelineSettings(verify=verify, keep_going=keep_going, budget=global_budget, seed=seed,
                                progress=progress, dump_dir=Path(dump_dir) if dump_dir else None,
                                inputs_origin=origin, keeps_value_info=prepared.keeps_value_info, latency=timer,
                                latency_compare=check_on(timer) if never_slower else None,
                                output_slices=verifier.slices if verifier else parse_slices(budget_slices),
                                evaluator=load_evaluator(evaluator) if evaluator is not None else None)
    if settings.evaluator is not None and (global_budget is None or global_budget.score_budget() is None):
        raise UsageError("--evaluator needs a score term in --budget, e.g. score=-1% or score>=0.75")
    weights_dir = external_folder(source)
    with spill_folder(source) if weights_dir is not None else contextlib.nullcontext() as spill:
        context = RunContext(weights_dir=weights_dir, spill_dir=spill)
        try:
            outcome = run_pipeline(trunk, configured, loaded, settings, verifier, calibration_feeds,
                                   model_size=prepared.given_size, context=context,
                                   reference=prepared.data if head is None else None,
                                   reference_outputs=reference_outputs if head is None else None)
        except VerificationError as error:
            if error.report is not None:
                error.report["input"] = summarize(source, size=prepared.given_size, size_of=prepared.given)
            raise
        changed = any(entry["status"] == "accepted" for entry in outcome.passes)
        final = prepared.pristine() if not changed else outcome.model if head is None else attach_head(outcome.model, head)
        # Summarised while the inferred shapes are still there; MACs of a model that leaves the
        # input shapes dynamic are counted at `at` instead (count_macs_at).
        at = {name: c.shape for name, c in chosen.items()}
        output_summary = summarize(final if changed else outcome.model, size=0, count=not leaves_dynamic(final, at))  # sized below
        # The shapes graphopt inferred for its own use are not the user's; don't ship them
        # (output_annotations: the output keeps the value_info the input had).
        stripped = changed and keep_given_value_info(final, prepared.annotations)
        # Measured by the last check (the placeholder form's bytes plus the weights' byte
        # counts): sizing the result through protobuf would serialise it all once more.
        size = prepared.given_size if not changed else outcome.size if head is None else None
        output_summary["bytes"] = size if size is not None and not (stripped and prepared.keeps_value_info) else model_bytes(final)
        input_summary = summarize(source, size=prepared.given_size, size_of=prepared.given,
                                  count=not leaves_dynamic(prepared.given, at))
        report = run_report(
            version=__version__,
            input_summary=count_macs_at(input_summary, prepared.given, at, stubs=prepared.stubs),
            output_summary=count_macs_at(output_summary, final, at), passes=outcome.passes, verify=verify,
            samples=len(verifier.samples) if verifier else 0, inputs=origin, budget=global_budget,
            end_to_end=outcome.end_to_end,
            warnings=list(loaded.warnings) + model_warnings + pass_warnings(outcome.passes) + _judged_on_fitting_data(origin, outcome.passes)
            + growth_warnings(input_summary.get("bytes"), output_summary.get("bytes"), outcome.passes),
            latency=timer.report())
        report["verification"]["shapes"] = {name: c.to_dict() for name, c in chosen.items()}
        report["verification"]["frozen"] = freeze_shapes
        report["never_slower"] = outcome.never_slower
        if head is not None:
            report["verification"]["selection_head"] = dict(head.describe(), agreement=agreement(
                head, reference_outputs or verifier.outputs(source), verifier.outputs(final)) if changed else None)
        yield final, report, spill


def _confirmed_outputs(confirmation: dict, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]] | None:
    """The outputs of the run that confirmed the chosen shapes (`run_shapes`), when it ran the
    input model on the verifier's very samples: the reference outputs, without a second session."""
    feeds, outputs = confirmation.get("feeds"), confirmation.get("outputs")
    if feeds is None or outputs is None:
        return None
    confirmed = split_samples(feeds)
    same = len(confirmed) == len(samples) and all(
        done.keys() == sample.keys() and all(done[name].dtype == sample[name].dtype and np.array_equal(done[name], sample[name])
                                             for name in sample) for done, sample in zip(confirmed, samples))
    return outputs if same else None


def _judged_on_fitting_data(origin: str, entries: list[dict]) -> list[str]:
    """A warning when a lossy result was verified only on the samples its passes fitted to."""
    lossy = [entry["name"] for entry in entries if entry.get("status") == "accepted" and not entry.get("lossless", True)]
    if origin != "calibration" or not lossy:
        return []
    return [f"{', '.join(lossy)} verified on the {parameter('calibration')} samples they were fitted to (a quarter held "
            f"out while fitting); give unseen samples with {parameter('inputs')} to verify on inputs no pass has seen"]


def prepare_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """A checked, shape-inferred model from a path or a ModelProto (the caller's proto is not modified)."""
    return _prepared(model).running


@dataclasses.dataclass
class _Prepared:
    """The checked, shape-inferred model passes and verification run on, and what it was given as."""

    running: onnx.ModelProto
    given: onnx.ModelProto  # the model as given, unless it was read from a file (then `running` itself)
    data: bytes | None  # the given model serialised, when at hand (its size; the reference session reads it)
    keeps_value_info: bool  # whether the given model has value_info (the output keeps it then)
    warnings: list[str] = dataclasses.field(default_factory=list)  # declared output shapes repaired
    annotations: set[str] = dataclasses.field(default_factory=set)  # the tensors the given model annotated
    stubs: dict | None = None  # `given`'s Constant-node placeholders (convert.constant_placeholders), read once

    @property
    def given_size(self) -> int | None:
        return len(self.data) if self.data is not None else None

    def pristine(self) -> onnx.ModelProto:
        """A copy of the model as given (the result of a run that changed nothing)."""
        return onnx.load_model_from_string(self.data) if self.data is not None else copy_model(self.given)


def _prepared(model: onnx.ModelProto | str | os.PathLike) -> _Prepared:
    if isinstance(model, (str, os.PathLike)):
        given, data = read_model(model)
        # The same nodes stand in for the output check, the input's check and its MAC count.
        stubs = constant_placeholders(given.graph)
        given, warnings = repaired_output_shapes(given, stubs=stubs)
        if warnings:
            data = serialized_bytes(given) if data is not None else None
        keeps = bool(len(given.graph.value_info))
        annotations = annotated_names(given)
        # Read from a file, the model is graphopt's own: inferred in place, its weights not copied.
        running = checked_input(given, path=str(model), data=data, in_place=data is not None, stubs=stubs)
        return _Prepared(running, given if data is None else running, data, keeps, warnings, annotations, stubs)
    if not isinstance(model, onnx.ModelProto):
        raise UsageError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")
    if any(external_data_helper.uses_external_data(t) and not os.path.isabs(external_data_helper.ExternalDataInfo(t).location)
           for t in iter_tensors(model)):
        raise InputError("the ModelProto refers to external data that is not loaded; pass its path instead")
    # A model graphopt loaded (an over-2-GiB result) refers to its data files by absolute path.
    stubs = constant_placeholders(model.graph)
    model, warnings = repaired_output_shapes(model, stubs=stubs)
    data = None if external_folder(model) is not None else serialized_bytes(model)
    return _Prepared(checked_input(model, data=data), model, data, bool(len(model.graph.value_info)), warnings,
                     annotated_names(model), stubs)


def prepare_feeds(feeds, model, *, option=None) -> dict[str, np.ndarray]:
    """Checked `{input: (N, *shape) array}` from a mapping, an `.npz`, a folder of samples or an iterable of samples."""
    from graphopt.verify.calibration_sources import CalibrationFolder, stack_samples

    if isinstance(feeds, (str, os.PathLike)) and os.path.isdir(feeds):  # one .npy/.npz/image file per sample
        feeds = CalibrationFolder(Path(feeds))
    if isinstance(feeds, CalibrationFolder):
        return check_feeds(feeds.stacked(model), model, option=option or parameter('inputs'))
    if isinstance(feeds, (str, os.PathLike)):
        return load_feeds(feeds, model, option=option)
    if isinstance(feeds, Mapping):
        return check_feeds(dict(feeds), model, option=option)
    if isinstance(feeds, Iterable):  # {input: array} per sample, read lazily up to MAX_SAMPLES
        return check_feeds(stack_samples(feeds, model), model, option=option or parameter('inputs'))
    raise UsageError(f"{option or parameter('inputs')} must be a mapping of arrays or an .npz path")


def _nested(options) -> dict[str, dict[str, Any]]:
    return {str(name): dict(values) for name, values in (options or {}).items()}
