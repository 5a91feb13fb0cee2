"""numpy evaluators for the cheap ops constant folding meets most: shape arithmetic and small math.

Each evaluator returns the node's outputs exactly as onnxruntime computes them, or None where
it cannot promise that (an unusual dtype, a corner of the op's semantics it does not model, a
value it would have to guess); the folder then hands the node to onnxruntime instead. So an
evaluator only covers the cases where numpy and the ONNX definition agree bit for bit:
- float elementwise math only in float32/float64 (float16 goes to ORT: its rounding path is
  the runtime's business);
- integer `Div` truncates toward zero as ONNX does (numpy's `//` floors), never by zero;
- `Range` only for integers (float ranges accumulate rounding the way the runtime does);
- `Cast` only between bool, integers, float32 and float64, and float to integer only for finite
  values inside the target's range.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["NUMPY_OPS", "evaluate_with_numpy"]

_FLOATS = (np.float32, np.float64)
_INTEGERS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
_CASTABLE = {np.dtype(t) for t in (*_FLOATS, *_INTEGERS, np.bool_)}
_MATH_TYPES = {np.dtype(t) for t in (*_FLOATS, *_INTEGERS)}
# ONNX TensorProto data types numpy represents exactly (Cast's `to`).
_ONNX_TO_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_, 11: np.float64, 12: np.uint32, 13: np.uint64}


def evaluate_with_numpy(node: gs.Node, inputs: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """The node's output values, or None when numpy cannot match onnxruntime here (see module doc).

    `inputs` are the node's input values in order, None for an omitted optional input.
    """
    evaluate = NUMPY_OPS.get(node.op)
    if evaluate is None or (node.domain or "") not in ("", "ai.onnx"):
        return None
    try:
        result = evaluate(node, inputs)
    except (ValueError, IndexError, TypeError, OverflowError, KeyError):
        return None  # what numpy rejects, ORT decides (and may reject too)
    if result is None:
        return None
    return [np.asarray(value, order="C") for value in result]  # ascontiguousarray would make a scalar 1-D


def _same_math_dtype(values) -> bool:
    return all(v is not None for v in values) and len({v.dtype for v in values}) == 1 and values[0].dtype in _MATH_TYPES


def _binary(operation: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def evaluate(node, inputs):
        if len(inputs) != 2 or not _same_math_dtype(inputs):
            return None
        with np.errstate(all="ignore"):  # integer wrap-around and inf/nan behave as in ORT
            return [np.asarray(operation(inputs[0], inputs[1])).astype(inputs[0].dtype, copy=False)]

    return evaluate


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    if a.dtype.kind == "f":
        return np.divide(a, b)
    if np.any(b == 0):
        raise ValueError("integer division by zero")  # the runtime's behaviour is undefined
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient)


def _neg(node, inputs):
    if len(inputs) != 1 or not _same_math_dtype(inputs) or inputs[0].dtype.kind == "u":
        return None
    with np.errstate(all="ignore"):
        return [np.negative(inputs[0])]


def _constant(node, inputs):
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        value = attrs["value"]
        # The stored type first: reading `values` of a bfloat16 constant converts (and warns).
        if not isinstance(value.export_dtype, np.dtype) and not isinstance(value.export_dtype, type):
            return None
        if np.dtype(value.export_dtype) not in _CASTABLE or np.dtype(value.export_dtype) != value.values.dtype:
            return None
        return [value.values]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return [np.array(attrs[key], dtype=dtype)]
    return None  # sparse and string values go to ORT


def _size(node, inputs):
    return [np.array(inputs[0].size, dtype=np.int64)]


def _gather(node, inputs):
    data, indices = inputs
    if indices.dtype.kind not in "iu":
        return None
    axis = int(node.attrs.get("axis", 0))
    size = data.shape[axis]
    if np.any(indices >= size) or np.any(indices < -size):
        return None
    return [np.take(data, indices.astype(np.int64), axis=axis)]


def _concat(node, inputs):
    if any(v is None for v in inputs) or len({v.dtype for v in inputs}) != 1:
        return None
    return [np.concatenate(inputs, axis=int(node.attrs["axis"]))]


def _axes(node, inputs) -> list[int] | None:
    """Unsqueeze/Squeeze axes: the `axes` input from opset 13, the attribute before."""
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in inputs[1].ravel()]
    return [int(a) for a in node.attrs["axes"]] if "axes" in node.attrs else None


def _unsqueeze(node, inputs):
    axes = _axes(node, inputs)
    rank = inputs[0].ndim + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    if len(set(axes)) != len(axes) or any(a < 0 or a >= rank for a in axes):
        return None
    return [np.expand_dims(inputs[0], tuple(axes))]


def _squeeze(node, inputs):
    axes = _axes(node, inputs)
    data = inputs[0]
    if axes is None:
        return [np.squeeze(data)]
    axes = tuple(a + data.ndim if a < 0 else a for a in axes)
    if any(data.shape[a] != 1 for a in axes):
        return None
    return [np.squeeze(data, axis=axes)]


def _reshape(node, inputs):
    data, shape = inputs
    dims = [int(d) for d in shape.ravel()]
    if not node.attrs.get("allowzero", 0):
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        return None
    return [data.reshape(dims)]


def _flatten(node, inputs):
    data = inputs[0]
    axis = int(node.attrs.get("axis", 1))
    axis = axis + data.ndim if axis < 0 else axis
    return [data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:]))]


def _cast(node, inputs):
    target = _ONNX_TO_NUMPY.get(int(node.attrs["to"]))
    value = inputs[0]
    if target is None or value.dtype not in _CASTABLE:
        return None
    target = np.dtype(target)
    if value.dtype.kind == "f" and target.kind in "iu":
        info = np.iinfo(target)
        if not np.all(np.isfinite(value)) or np.any(value <= info.min - 1.0) or np.any(value >= info.max + 1.0):
            return None  # out of range: implementation-defined in the runtime
    return [value.astype(target)]


def _slice(node, inputs):
    data = inputs[0]
    if len(inputs) >= 3:  # opset 10+: starts, ends, axes, steps are inputs
        starts, ends = inputs[1], inputs[2]
        axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else np.arange(len(starts))
        steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else np.ones(len(starts), np.int64)
    else:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(*(np.asarray(v, dtype=np.int64).ravel().tolist() for v in (starts, ends, axes, steps))):
        axis = axis + data.ndim if axis < 0 else axis
        index[axis] = _onnx_slice(start, end, step, data.shape[axis])
    return [data[tuple(index)]]


def _onnx_slice(start: int, end: int, step: int, dim: int) -> slice:
    """Slice's clamping rules (which differ from Python's for a negative step's end)."""
    if step == 0:
        raise ValueError("step 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    end = min(max(end, -1), dim - 1)
    return slice(min(max(start, 0), dim - 1), None if end < 0 else end, step)


def _range(node, inputs):
    if not _same_math_dtype(inputs) or inputs[0].dtype.kind not in "iu":
        return None
    start, limit, delta = (int(v) for v in inputs)
    if delta == 0:
        return None
    return [np.arange(start, limit, delta, dtype=inputs[0].dtype)]


def _transpose(node, inputs):
    perm = node.attrs.get("perm")
    return [np.transpose(inputs[0], None if perm is None else [int(p) for p in perm])]


def _constant_of_shape(node, inputs):
    value = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else value.values
    if fill.dtype not in _CASTABLE:
        return None
    return [np.full(tuple(int(d) for d in inputs[0].ravel()), fill.ravel()[0], dtype=fill.dtype)]


def _expand(node, inputs):
    data, shape = inputs
    target = np.broadcast_shapes(data.shape, tuple(int(d) for d in shape.ravel()))
    return [np.broadcast_to(data, target).copy()]


def _equal(node, inputs):
    if not _same_math_dtype(inputs) and not all(v is not None and v.dtype == np.bool_ for v in inputs):
        return None
    return [np.equal(inputs[0], inputs[1])]


def _where(node, inputs):
    condition, a, b = inputs
    if condition.dtype != np.bool_ or a.dtype != b.dtype:
        return None
    return [np.where(condition, a, b)]


NUMPY_OPS: dict[str, Callable] = {
    "Constant": _constant,
    "Size": _size,
    "Gather": _gather,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Cast": _cast,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_divide),
    "Neg": _neg,
    "Slice": _slice,
    "Range": _range,
    "Transpose": _transpose,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Equal": _equal,
    "Where": _where,
}
