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
from graphopt.errors import InputError, UsageError, VerificationError
from graphopt.external_data import spill_folder
from graphopt.given_annotations import keep_given_value_info
from graphopt.model_io import (
    PROTOBUF_LIMIT,
    check_model,
    copy_model,
    external_data_dir,
    inferred_with_size,
    initializer_nbytes,
    iter_tensors,
    materialize_external_data,
    read_model,
    save_model,
    uses_external_data,
    wire_bytes,
)
from graphopt.emit.write import emit_model
from graphopt.latency.never_slower import check_on
from graphopt.opset_requirements import pass_warnings
from graphopt.pipeline import PipelineSettings, configure_passes, run_pipeline
from graphopt.registry import load_registry
from graphopt.summary import model_bytes, summarize
from graphopt.verify import Budget, Verifier, generate_feeds, load_feeds, split_samples
from graphopt.verify.evaluator import load_evaluator
from graphopt.verify.slices import output_slices, parse_slices
from graphopt.verify.feeds import check_feeds
from graphopt.verify.input_shapes import freeze_input_shapes, run_shapes
from graphopt.output_annotations import repaired_output_shapes
from graphopt.writable import require_writable_folder
from graphopt.shaped_summary import count_macs_at
from graphopt.parameter_names import parameter

__all__ = ["Result", "optimize", "optimize_to_file", "prepare_model", "prepare_feeds", "REPORT_SCHEMA"]

REPORT_SCHEMA = "graphopt.report/1"
_VERIFY_MODES = ("each", "end", "off")


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
    """Runs `passes` over `model` and verifies the result in onnxruntime.

    `inputs` / `calibration`: `{input name: array shaped (N, *shape)}` or an `.npz` path.
    `budget`: the end-to-end accuracy budget of lossy passes (`"cos=0.99"`, `"sqnr=30"`).
    `plugins`: extra plugin objects (modules or instances with hook implementations), used
    besides those of the `graphopt` entry-point group. `set_options` takes option values as
    text, as `--set` does. Dims neither fixed nor in `input_shapes` are chosen and confirmed
    (`graphopt.verify.input_shapes`; the report's `verification.shapes` says why); the output
    keeps them dynamic unless `freeze_shapes`, which writes the shapes verified into it.
    `latency_on`: the backend every latency decision is timed on (`host-ort` by default,
    `host-litert`, `none`, or a plugin's; see `graphopt.latency`).
    `never_slower`: time the result against the input on that backend and roll back the
    lossless stages that made it slower (the report's `never_slower`). `budget_slices`:
    `"NAME[@AXIS]=START:STOP,..."` specs, parts of outputs the budget also holds on
    (`graphopt.verify.slices`; detector layouts are detected). `evaluator`:
    `function(model_path, inputs) -> score` or `"package.module:function"`, held to the
    budget's `score=-1%` / `score>=0.75` terms (`graphopt.verify.evaluator`). Raises
    `graphopt.GraphoptError` subclasses (see `graphopt.errors`).
    """
    with _optimized(model, passes, options, inputs=inputs, calibration=calibration, verify=verify, budget=budget,
                    input_shapes=input_shapes, keep_going=keep_going, seed=seed, plugins=plugins, dump_dir=dump_dir,
                    set_options=set_options, progress=progress, freeze_shapes=freeze_shapes, latency_on=latency_on,
                    never_slower=never_slower, budget_slices=budget_slices, evaluator=evaluator) as (final, report):
        # Under 2 GiB the result is self-contained, as DESIGN.md promises; over it, its weights
        # stay in the input's data files (`model_io.EXTERNAL_DIR_KEY`) and `save_model` copies
        # them. What passes spilled comes back in memory: the spill folder goes with the block.
        if not _read_in_if_it_fits(final):
            materialize_external_data(final, spilled_only=True)
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

    Takes `optimize`'s keyword arguments, and `emit` (`"ort"`, `"tflite"`) with `emit_precision`
    (tflite: `"fp32"`, `"fp16"`, `"int8"`) to write for that runtime instead (graphopt/emit). Weights still in the input's data files, or spilled
    there by passes, are streamed into the output's data file, never gathered in memory: the
    way to write a model of several GiB. `external_data` writes one even when it would fit.
    """
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    require_writable_folder(Path(output), "output")  # before any pass runs, not after
    emit, precision = settings.pop("emit", None) or "onnx", settings.pop("emit_precision", "fp32")
    if emit == "tflite" and settings.get("latency_on") is None:
        settings["latency_on"] = "host-litert"  # decisions timed where the flatbuffer will run
    with _optimized(model, passes, options, **settings) as (final, report):
        if emit != "onnx":  # verified in its runtime, then written (graphopt/emit)
            _read_in_if_it_fits(final)
            report["emit"] = emit_model(final, output, emit, precision, settings)
            return report
        if not external_data:
            _read_in_if_it_fits(final)
        save_model(final, output, external_data=external_data, source=source)
        return report


def _read_in_if_it_fits(model: onnx.ModelProto) -> bool:
    """Reads every external weight of `model` (the run's own) into it, in place, if that fits in a proto."""
    if uses_external_data(model) and initializer_nbytes(model) + model.ByteSize() < PROTOBUF_LIMIT:
        materialize_external_data(model)
        return True
    return False


@contextlib.contextmanager
def _optimized(
    model, passes, options, *, inputs=None, calibration=None, verify="each", budget=None, input_shapes=None,
    keep_going=False, seed=0, plugins=(), dump_dir=None, set_options=None, progress=False, freeze_shapes=False,
    latency_on=None, never_slower=True, budget_slices=None, evaluator=None,
) -> Iterator[tuple[onnx.ModelProto, dict]]:
    """(the optimized model, the report), valid for the block: weights may be in its spill folder."""
    if verify not in _VERIFY_MODES:
        raise UsageError(f"verify must be one of {', '.join(_VERIFY_MODES)}; got '{verify}'")
    names = [p.strip() for p in passes.split(",")] if isinstance(passes, str) else list(passes)
    names = [name for name in names if name]
    global_budget = Budget.parse(budget)
    loaded = load_registry(plugins)
    configured = configure_passes(loaded.registry, names, _nested(options), _nested(set_options))
    timer = latency.backend(latency_on, loaded)
    prepared = _prepared(model)
    pristine, source = prepared.given, prepared.running
    model_warnings = list(prepared.warnings)
    shapes = {name: tuple(int(d) for d in dims) for name, dims in (input_shapes or {}).items()}
    calibration_feeds = prepare_feeds(calibration, source, option=parameter("calibration")) if calibration is not None else None
    feeds = prepare_feeds(inputs, source) if inputs is not None else calibration_feeds
    chosen = run_shapes(source, shapes, feeds, feeds_from="inputs" if inputs is not None else "calibration", seed=seed,
                        confirm=verify != "off" or freeze_shapes)
    if freeze_shapes:
        prepared = _prepared(freeze_input_shapes(pristine, {name: c.shape for name, c in chosen.items()}))
        pristine, source = prepared.given, prepared.running
    verifier = None
    if verify != "off":
        if feeds is None:
            feeds = generate_feeds(source, {name: c.shape for name, c in chosen.items()}, seed=seed)
        verifier = Verifier(split_samples(feeds), output_slices(source, budget_slices, feeds))
    origin = "file" if inputs is not None else "calibration" if calibration is not None else "generated"
    settings = PipelineSettings(verify=verify, keep_going=keep_going, budget=global_budget, seed=seed,
                                progress=progress, dump_dir=Path(dump_dir) if dump_dir else None,
                                inputs_origin=origin, keeps_value_info=prepared.keeps_value_info, latency=timer,
                                latency_compare=check_on(timer) if never_slower else None,
                                output_slices=verifier.slices if verifier else parse_slices(budget_slices),
                                evaluator=load_evaluator(evaluator) if evaluator is not None else None)
    if settings.evaluator is not None and (global_budget is None or global_budget.score_budget() is None):
        raise UsageError("--evaluator needs a score term in --budget, e.g. score=-1% or score>=0.75")
    with spill_folder(source) as running:
        try:
            outcome = run_pipeline(running, configured, loaded, settings, verifier, calibration_feeds,
                                   model_size=prepared.running_size)
        except VerificationError as error:
            if error.report is not None:
                error.report["input"] = summarize(source, size=prepared.given_size, size_of=pristine)
            raise
        changed = any(entry["status"] == "accepted" for entry in outcome.passes)
        final = outcome.model if changed else copy_model(pristine)
        # Summarised while the inferred shapes are still there (MACs need them), sized as stored.
        output_summary = summarize(outcome.model, size=outcome.size if changed else prepared.given_size,
                                   size_of=final, value_info=prepared.keeps_value_info or not changed)
        # The shapes graphopt inferred for its own use are not the user's; don't ship them.
        if changed and keep_given_value_info(final, pristine) and prepared.keeps_value_info:
            output_summary["bytes"] = model_bytes(final)
        at = {name: c.shape for name, c in chosen.items()}  # MACs need concrete shapes
        report = {
            "schema": REPORT_SCHEMA,
            "graphopt_version": __version__,
            "input": count_macs_at(summarize(source, size=prepared.given_size, size_of=pristine), pristine, at),
            "output": count_macs_at(output_summary, final, at),
            "passes": outcome.passes,
            "verification": {
                "mode": verify,
                "samples": len(verifier.samples) if verifier else 0,
                "inputs": origin,
                "budget": global_budget.describe() if global_budget else None,
                "end_to_end": outcome.end_to_end,
                "shapes": {name: c.to_dict() for name, c in chosen.items()},
                "frozen": freeze_shapes,
            },
            "latency": timer.report(),
            "never_slower": outcome.never_slower,
            "warnings": list(loaded.warnings) + model_warnings + pass_warnings(outcome.passes),
        }
        yield final, report


def prepare_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """A checked, shape-inferred model from a path or a ModelProto (the caller's proto is not modified)."""
    return _prepared(model).running


@dataclasses.dataclass
class _Prepared:
    """The model as given, and the shape-inferred copy passes and verification run on."""

    given: onnx.ModelProto
    running: onnx.ModelProto
    given_size: int | None  # sizes, when serialising once for the checker and inference gave them
    running_size: int | None  # as the pipeline counts it: value_info only if the given model has some
    warnings: list[str] = dataclasses.field(default_factory=list)  # declared output shapes repaired

    @property
    def keeps_value_info(self) -> bool:
        return bool(len(self.given.graph.value_info))


def _prepared(model: onnx.ModelProto | str | os.PathLike) -> _Prepared:
    if isinstance(model, (str, os.PathLike)):
        given, data = read_model(model)
    elif not isinstance(model, onnx.ModelProto):
        raise UsageError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")
    elif external_data_dir(model) is not None:  # a model graphopt loaded (an over-2-GiB result) knows where its data lives
        given, data = model, None
        check_model(model)
    elif any(external_data_helper.uses_external_data(t) for t in iter_tensors(model)):
        raise InputError("the ModelProto refers to external data that is not loaded; pass its path instead")
    else:
        given, data = model, wire_bytes(model)
        check_model(model, data=data)
    given, warnings = repaired_output_shapes(given)
    if warnings and data is not None:
        data = wire_bytes(given)
    keeps = bool(len(given.graph.value_info))
    running, running_size = inferred_with_size(given, data=data, value_info=keeps)
    return _Prepared(given, running, len(data) if data is not None else None, running_size if data is not None else None,
                     warnings)


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
