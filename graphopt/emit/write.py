"""The emit step: the optimized model converted for its runtime, verified there, then written.

Verification runs the converted model in its own runtime (onnxruntime for `.ort`, LiteRT's
interpreter for `.tflite`) on the verification inputs (`--inputs`, else `--calibration`, else
generated), against onnxruntime running the optimized ONNX with all optimizations. Float32
targets must agree to 1e-4 of each output's range (`max_abs / max|reference|`); float16 to
cosine 0.999; int8 and int8-mixed to cosine 0.99. A miss is a VerificationError (exit 1) and nothing is
written; otherwise every file is written to a temporary name in the output's folder and renamed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import InputError, UsageError, VerificationError
from graphopt.verify.metrics import output_metrics

__all__ = ["emit_model", "EXTENSIONS", "verify_outputs"]

EXTENSIONS = {"onnx": ".onnx", "ort": ".ort", "tflite": ".tflite"}
_MAX_SAMPLES = 8
_RANGE_TOLERANCE = 1e-4
_COSINE = {"fp16": 0.999, "int8": 0.99, "int8-mixed": 0.99}


def emit_model(model: onnx.ModelProto, output, emit: str, precision: str, settings: dict) -> dict:
    """Converts, verifies and writes `model` as `emit` at `output` (companions beside it); the report entry."""
    output = Path(output)
    if emit not in EXTENSIONS:
        raise UsageError(f"--emit must be one of {', '.join(EXTENSIONS)}, not {emit!r}")
    if emit != "tflite" and precision != "fp32":
        raise UsageError("--emit-precision is for --emit tflite; quantize or fp16 the ONNX model with passes instead")
    samples, calibration = _feeds(model, settings)
    layouts: dict[str, str] = {}
    rewritten: dict[str, int] = {}
    mixed = None
    if emit == "ort":
        from graphopt.emit.ort_format import convert_to_ort, ort_session

        stem = output.name[: -len(".ort")] if output.name.endswith(".ort") else output.name
        converted = convert_to_ort(model, stem)
        reference = _onnxruntime_outputs(model, samples)
        files = {output: converted.pop(f"{stem}.ort")}
        files.update({output.with_name(name): data for name, data in converted.items()})
        session = ort_session(files[output])
        names = [value.name for value in session.get_outputs()]
        got = [dict(zip(names, session.run(None, sample))) for sample in samples]
        runtime = "onnxruntime (ORT format)"
    else:
        from graphopt.emit.tflite import convert_to_tflite, restore_layout, run_tflite

        converted = convert_to_tflite(model, precision, calibration)
        reference = _onnxruntime_outputs(model, samples)
        files = {output: converted.flatbuffer}
        rewritten = converted.rewritten
        mixed = converted.mixed
        raw, layouts = run_tflite(converted.flatbuffer, samples, model)
        got, output_layouts = restore_layout(raw, reference)
        layouts.update(output_layouts)
        runtime = "LiteRT interpreter (XNNPACK, 1 thread)"
    verification = verify_outputs(reference, got, precision)
    verification["runtime"] = runtime
    if not verification["ok"]:
        raise VerificationError(f"the emitted {emit} model disagrees with the optimized ONNX in {runtime}: {verification['summary']}")
    _write_all(files)
    entry = {"format": emit, "precision": precision, "files": [str(path) for path in files],
             "bytes": {str(path): len(data) for path, data in files.items()}, "verification": verification}
    if rewritten:
        entry["rewritten_for_converter"] = rewritten
    if mixed:
        entry["mixed_precision"] = mixed
    if layouts:
        entry["layout"] = layouts
        entry["layout_note"] = ("LiteRT lays images out channels last: inputs marked NCHW→NHWC are fed transposed, "
                                "outputs marked NHWC→NCHW were transposed back to compare")
    return entry


def verify_outputs(reference: list[dict], got: list[dict], precision: str) -> dict:
    """Per output, cosine, max abs error and max abs error over the reference's range; `ok` against the precision's bar."""
    per_output, failures = {}, []
    for name in reference[0]:
        expected = np.concatenate([np.asarray(r[name], dtype=np.float64).ravel() for r in reference])
        actual = np.concatenate([np.asarray(g[name], dtype=np.float64).ravel() for g in got])
        metrics = output_metrics(expected, actual)
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        relative = float(np.max(np.abs(expected - actual))) / scale if scale else float(np.max(np.abs(actual), initial=0.0))
        row = {"cosine": metrics["cosine"], "max_abs": metrics["max_abs"], "max_abs_over_range": relative}
        if precision == "fp32":
            row["within"] = relative <= _RANGE_TOLERANCE
        else:
            row["within"] = metrics["cosine"] >= _COSINE[precision]
        if not row["within"]:
            failures.append(f"{name}: cosine {metrics['cosine']:.6f}, max abs / range {relative:.3g}")
        per_output[name] = row
    bar = f"max abs <= {_RANGE_TOLERANCE:g} x range" if precision == "fp32" else f"cosine >= {_COSINE[precision]}"
    return {"ok": not failures, "bar": bar, "samples": len(reference), "outputs": per_output,
            "summary": "; ".join(failures) if failures else "all outputs within " + bar}


def _feeds(model: onnx.ModelProto, settings: dict) -> tuple[list[dict], dict | None]:
    from graphopt.api import prepare_feeds
    from graphopt.verify import generate_feeds, split_samples

    calibration = prepare_feeds(settings["calibration"], model, option="--calibration") if settings.get("calibration") is not None else None
    if settings.get("inputs") is not None:
        feeds = prepare_feeds(settings["inputs"], model)
    elif calibration is not None:
        feeds = calibration
    else:
        shapes = {name: tuple(int(d) for d in dims) for name, dims in (settings.get("input_shapes") or {}).items()}
        feeds = generate_feeds(model, shapes, seed=settings.get("seed", 0))
    return split_samples(feeds)[:_MAX_SAMPLES], calibration


def _onnxruntime_outputs(model: onnx.ModelProto, samples: list[dict]) -> list[dict]:
    from graphopt.verify.runner import SessionError, make_session

    try:
        session = make_session(model, optimize=True, threads=1)
    except SessionError as error:
        raise InputError(f"onnxruntime cannot run the optimized model to verify the emitted one: {error}") from error
    names = [value.name for value in model.graph.output]
    return [dict(zip(names, session.run(None, sample))) for sample in samples]


def _write_all(files: dict[Path, bytes]) -> None:
    """Each file to a temporary name beside it, then all renamed (the main file last)."""
    staged = []
    try:
        for path, data in files.items():
            folder = path.parent if str(path.parent) else Path(".")
            handle, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(name, 0o666 & ~umask)
            staged.append((name, path))
    except BaseException:
        for name, _ in staged:
            Path(name).unlink(missing_ok=True)
        raise
    for name, path in reversed(staged):
        os.replace(name, path)
