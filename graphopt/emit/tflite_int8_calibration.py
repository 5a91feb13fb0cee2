"""The calibration ranges of onnx2tf's int8 writer, collected by graphopt from whole samples.

onnx2tf 2.6.9 reads calibration data as `[input, .npy, mean, std]` entries and feeds sample `i`
as `expand_dims(data[i], 0)` cast to float32 (`load_calibration_samples`), then runs its float32
flatbuffer on them to take each tensor's min and max (`collect_calibration_ranges_from_tflite`).
So every input is calibrated at batch 1 and as float32: a batch-2 model meets its own fixed
Reshape with half the elements ("512 != 1024"), and int64 token ids are refused by the
interpreter. And a rank-3 input's layout in the flatbuffer is only known once it is written.

While graphopt converts, both are replaced (`graphopt_calibration`): the .npy files hold whole
samples in the ONNX layout (`(N, *input shape)`, their own dtype), each sample is fed whole, in
the flatbuffer input's dtype, moved channels last where the flatbuffer's shape says so, and the
ranges are min and max over the samples of every float tensor, as onnx2tf takes them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx

__all__ = ["calibration_files", "graphopt_calibration"]


def calibration_files(model: onnx.ModelProto, calibration: dict[str, np.ndarray], folder: Path) -> list:
    """onnx2tf's calibration list: one .npy per input holding its samples whole, mean 0, std 1."""
    entries = []
    for value in model.graph.input:
        if value.name not in calibration:
            continue
        path = folder / f"calibration_{len(entries)}.npy"
        np.save(path, np.asarray(calibration[value.name]))  # (N, *input shape), in the ONNX layout
        entries.append([value.name, str(path), np.zeros(1, np.float32), np.ones(1, np.float32)])
    return entries


@contextlib.contextmanager
def graphopt_calibration():
    """onnx2tf's calibration loader and range collector replaced while the block runs (yields whether they could be)."""
    try:
        import onnx2tf.tflite_builder as builder
        from onnx2tf.tflite_builder import quantization
    except ImportError:
        yield False
        return
    load, collect = getattr(builder, "load_calibration_samples", None), getattr(builder, "collect_calibration_ranges_from_tflite", None)
    if load is None or collect is None or not hasattr(quantization, "TensorCalibrationRange"):
        yield False
        return

    def whole_samples(**kwargs):
        return [{name: value[0] for name, value in sample.items()} for sample in load(**kwargs)]  # undo its expand_dims

    def ranges(*, tflite_path, calibration_samples):
        return _ranges(tflite_path, calibration_samples, quantization.TensorCalibrationRange)
    builder.load_calibration_samples, builder.collect_calibration_ranges_from_tflite = whole_samples, ranges
    try:
        yield True
    finally:
        builder.load_calibration_samples, builder.collect_calibration_ranges_from_tflite = load, collect


def _ranges(tflite_path: str, samples: list[dict], make_range) -> dict:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from graphopt.emit.tflite import _to_shape

    interpreter = Interpreter(model_path=tflite_path, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    found: dict = {}
    for sample in samples:
        details = interpreter.get_input_details()
        by_name = {_plain(detail["name"]): detail for detail in details}
        for position, (name, value) in enumerate(sample.items()):
            detail = by_name.get(name, details[min(position, len(details) - 1)])
            value, _ = _to_shape(np.asarray(value), tuple(detail["shape"]))
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
            _update(found, name, value, make_range)
        interpreter.invoke()
        for detail in interpreter.get_tensor_details():
            if detail["name"]:
                with contextlib.suppress(ValueError):
                    _update(found, _plain(detail["name"]), interpreter.get_tensor(detail["index"]), make_range)
    return found


def _plain(name) -> str:
    """A tensor name as onnx2tf keys its ranges: text, without a trailing ':0'."""
    text = name.decode() if isinstance(name, bytes) else str(name)
    return text[:-2] if text.endswith(":0") else text


def _update(found: dict, name: str, value: np.ndarray, make_range) -> None:
    if value.size == 0 or value.dtype.kind != "f":
        return
    low, high = float(np.nanmin(value)), float(np.nanmax(value))
    if not (np.isfinite(low) and np.isfinite(high)):
        return
    if name not in found:
        found[name] = make_range(low, high, 1)
        return
    have = found[name]
    have.min_value, have.max_value, have.num_samples = min(have.min_value, low), max(have.max_value, high), have.num_samples + 1
