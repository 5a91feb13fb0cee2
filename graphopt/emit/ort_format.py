"""`--emit ort`: ONNX Runtime's ORT format and the operator configs of a reduced mobile build.

onnxruntime's own converter (`onnxruntime.tools.convert_onnx_models_to_ort`, fixed
optimizations, `target_platform="arm"`: no x86-only NCHWc layouts, int8 QDQ fused as on ARM)
writes `MODEL.ort` and `MODEL.required_operators.config`; a second run with type reduction
writes `MODEL.required_operators_and_types.config`. Both configs feed onnxruntime's
`build.py --include_ops_by_config`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from pathlib import Path

import onnx

from graphopt.errors import InputError

__all__ = ["convert_to_ort", "ort_session"]


def convert_to_ort(model: onnx.ModelProto, stem: str) -> dict[str, bytes]:
    """`{file name: bytes}`: `STEM.ort`, `STEM.required_operators.config`, `STEM.required_operators_and_types.config`.

    Raises InputError naming the op onnxruntime has no kernel for.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # it logs each config it writes

    files = {}
    with tempfile.TemporaryDirectory(prefix="graphopt-ort-") as folder:
        source = Path(folder) / "in" / f"{stem}.onnx"
        source.parent.mkdir()
        onnx.save_model(model, str(source))
        log = io.StringIO()
        for types in (False, True):
            out = Path(folder) / ("types" if types else "ops")
            try:
                with contextlib.redirect_stdout(log):
                    convert_onnx_models_to_ort(source, output_dir=out, optimization_styles=[OptimizationStyle.Fixed],
                                               target_platform="arm", enable_type_reduction=types)
            except Exception as error:
                raise InputError(f"onnxruntime cannot convert the model to ORT format: {_missing_op(error)}") from error
            for path in out.iterdir():
                if path.suffix in (".ort", ".config"):
                    files[path.name] = path.read_bytes()
    return files


def _missing_op(error: Exception) -> str:
    text = str(error)
    for pattern in (r"(No Op registered for \S+ with domain_version of \d+)", r"(Could not find an implementation for \S+)",
                    r"(Unrecognized attribute: [^\n]+)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return text.splitlines()[0][:300] if text else type(error).__name__


def ort_session(flatbuffer: bytes):
    """An onnxruntime session of an ORT-format model (1 thread: the verification runs, not timing)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ORT")
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(flatbuffer, options, providers=["CPUExecutionProvider"])
