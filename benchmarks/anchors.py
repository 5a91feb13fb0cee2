"""The tools graphopt is measured against, each as `(ModelProto, seconds)` from a model path.

onnxsim and onnxoptimizer (graph simplifiers), onnxruntime's own offline optimizer (the graph
ORT builds at load time, saved), and onnxruntime's quantizer (static QDQ and dynamic). Each
runs as its documentation shows; a tool that fails on a model raises, and the caller records
the failure instead of a number.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["ANCHORS", "onnxsim_simplify", "onnxoptimizer_fuse", "ort_offline", "ort_quantize_static", "ort_quantize_dynamic"]


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
