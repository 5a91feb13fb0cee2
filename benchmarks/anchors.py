"""The tools graphopt is measured against, each as `(ModelProto, seconds)` from a model path.

onnxsim and onnxoptimizer (graph simplifiers), onnxruntime's own offline optimizer (the graph
ORT builds at load time, saved), onnxruntime's quantizer (static QDQ and dynamic), and AMD
Quark's ONNX quantizer (`quark_rows`: run by Quark's own interpreter, see `quark_worker.py`).
Each runs as its documentation shows; a tool that fails on a model raises, and the caller
records the failure instead of a number.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["ANCHORS", "QUARK_CONFIGS", "onnxsim_simplify", "onnxoptimizer_fuse", "ort_offline", "ort_quantize_static",
           "ort_quantize_dynamic", "quark_rows"]


def _timed(action: Callable[[], onnx.ModelProto]) -> tuple[onnx.ModelProto, float]:
    start = time.perf_counter()
    model = action()
    return model, time.perf_counter() - start


def onnxsim_simplify(path: Path, calibration: Mapping[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, float]:
    import onnxsim

    def run():
        simplified, ok = onnxsim.simplify(onnx.load(str(path)))
        if not ok:
            raise RuntimeError("onnxsim could not validate its result")
        return simplified

    return _timed(run)


def onnxoptimizer_fuse(path: Path, calibration=None) -> tuple[onnx.ModelProto, float]:
    import onnxoptimizer

    return _timed(lambda: onnxoptimizer.optimize(onnx.load(str(path)), onnxoptimizer.get_fuse_and_elimination_passes()))


def ort_offline(path: Path, calibration=None, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED) -> tuple[onnx.ModelProto, float]:
    """The graph onnxruntime builds at load time, saved; EXTENDED keeps it runnable on any CPU."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "ort_optimized.onnx"

        def run():
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            options.optimized_model_filepath = str(target)
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return onnx.load(str(target))

        return _timed(run)


class _Reader:
    """onnxruntime.quantization's calibration interface over `{input: (N, *shape)}` arrays."""

    def __init__(self, calibration: Mapping[str, np.ndarray]):
        count = len(next(iter(calibration.values())))
        self._samples = iter([{name: values[i, ...] for name, values in calibration.items()} for i in range(count)])

    def get_next(self):
        return next(self._samples, None)


def ort_quantize_static(path: Path, calibration: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, float]:
    """`quantize_static`: QDQ, per-channel weights, MinMax, after ORT's pre-processing (shape inference).

    Pre-processing runs without its graph optimization step: with it, onnxruntime 1.32's
    quantizer writes an int32 DequantizeLinear on a fused Conv bias that onnxruntime itself
    then refuses to load (seen on PP-OCR cls).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        prepared, output = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"

        def run():
            quant_pre_process(str(path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
            quantize_static(str(prepared), str(output), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            return onnx.load(str(output))

        return _timed(run)


def ort_quantize_dynamic(path: Path, calibration=None) -> tuple[onnx.ModelProto, float]:
    """`quantize_dynamic`: per-channel int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        prepared, output = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"

        def run():
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(output), per_channel=True, weight_type=QuantType.QInt8)
            return onnx.load(str(output))

        return _timed(run)


# label -> (function, lossy): what benchmarks/run.py puts beside graphopt's recipes
ANCHORS = {
    "onnxsim": (onnxsim_simplify, False),
    "onnxoptimizer": (onnxoptimizer_fuse, False),
    "ORT offline (extended)": (ort_offline, False),
    "ORT quantize_static": (ort_quantize_static, True),
    "ORT quantize_dynamic": (ort_quantize_dynamic, True),
}


# row label -> (`quark_worker.py` config (its docstring says what each is), time limit in seconds)
QUARK_CONFIGS = {"Quark A8W8": ("a8w8", 120.0), "Quark A8W8 +CLE/SmoothQuant": ("a8w8_algo", 120.0),
                 "Quark U8S8": ("u8s8", 120.0), "Quark auto-search": ("autosearch", 240.0)}
QUARK_NOT_INSTALLED = "not installed (give --quark-python PATH or GRAPHOPT_QUARK_PYTHON)"


def _torch_site_packages() -> str | None:
    """The site-packages folder holding this interpreter's torch (Quark 0.13 imports torch)."""
    spec = importlib.util.find_spec("torch")
    return str(Path(spec.origin).parent.parent) if spec and spec.origin else None


def quark_rows(python: str | None, path: Path, calibration: Path, folder: Path,
               configs: Mapping[str, tuple[str, float]] = QUARK_CONFIGS) -> dict[str, dict]:
    """One corpus row per Quark config: `{"exit", "path", "seconds", "error"?, "note"?}`.

    Each config runs in its own process of Quark's interpreter `python` (its own venv: amd-quark
    0.13 pins onnx <= 1.22) and is killed after its time limit plus a minute for the import
    (the auto-search stops itself once 60% of its limit is spent quantizing). `seconds`
    is Quark's quantization alone (the worker's import left out); a model that onnxruntime
    cannot load (Quark's custom ops) is a failed row that says so.
    """
    if not python:
        return {tool: {"exit": "n/a", "path": None, "seconds": None, "error": QUARK_NOT_INSTALLED} for tool in configs}
    worker = Path(__file__).resolve().parent / "quark_worker.py"
    torch_path = _torch_site_packages()
    rows = {}
    for tool, (config, limit) in configs.items():
        out = folder / f"{path.stem}.quark_{config}"
        command = [python, str(worker), str(path.resolve()), str(calibration.resolve()), str(out.resolve()), "--configs", config,
                   "--search-budget", str(0.6 * limit)]
        command += ["--torch-path", torch_path] if torch_path else []
        out.mkdir(parents=True, exist_ok=True)
        try:  # in `out`: Quark writes its quantized_info.csv into the working directory
            subprocess.run(command, capture_output=True, text=True, timeout=limit + 60, cwd=out)
            report = json.loads((out / "quark.json").read_text())
        except subprocess.TimeoutExpired:
            rows[tool] = {"exit": "skipped", "path": None, "seconds": None, "error": f"over the {limit:.0f} s limit"}
            continue
        except (OSError, ValueError) as error:
            rows[tool] = {"exit": "fail", "path": None, "seconds": None, "error": f"the Quark worker did not report: {error}"}
            continue
        result = report["configs"].get(config, {})
        note = "; ".join(filter(None, [result.get("config"), report.get("prepared")]))
        row = {"exit": 0, "path": Path(result["path"]) if result.get("path") else None, "seconds": result.get("seconds"), "note": note}
        if row["path"] is None:
            row.update(exit="fail", error=result.get("error", "no model written"))
        elif result["seconds"] > limit:
            row.update(exit="skipped", path=None, error=f"took {result['seconds']:.0f} s, over the {limit:.0f} s limit")
        else:
            try:
                ort.InferenceSession(str(row["path"]), providers=["CPUExecutionProvider"])
            except Exception as error:  # noqa: BLE001 - Quark's custom ops need its own library
                domains = ", ".join(result.get("custom_domains", [])) or "none"
                row.update(exit="fail", path=None, error=f"plain onnxruntime cannot load it (custom domains: {domains}): {str(error)[:120]}")
        rows[tool] = row
    return rows
