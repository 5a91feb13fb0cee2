"""What each op does to channels: the tables and checks the dependency-group search relies on."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries

__all__ = ["PER_CHANNEL", "ELEMENTWISE", "PER_CHANNEL_PARAMS", "REDUCE", "Unsafe", "check_per_channel", "is_depthwise", "rank", "dim", "axis_of"]

# Ops that act on each channel alone, reading one tensor (extra inputs must be scalars).
PER_CHANNEL = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Gelu", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity",
    "Dropout", "Cast", "Floor", "Ceil", "Round", "Mish", "ThresholdedRelu", "Sign",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample", "Pad",
}
# Elementwise with broadcasting: every input carrying the channels joins the group.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean"}
PER_CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1"}


class Unsafe(Exception):
    """A group cannot be pruned safely; the message is the reason reported."""


def check_per_channel(node: gs.Node, channel_axis: int) -> None:
    """Raises Unsafe unless `node` keeps each channel in place (the channels on `channel_axis`, negative)."""
    op = node.op
    if op in REDUCE:
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            axes = graph_queries.constant_value(node.inputs[1])
        ndim = rank(node.inputs[0], 0)
        if axes is None or not node.attrs.get("keepdims", 1) or ndim == 0 or (ndim + channel_axis) in [a % ndim for a in np.atleast_1d(axes)]:
            raise Unsafe(f"{op} '{node.name}' reduces over the channels")
        return
    if op in ("Resize", "Upsample"):
        scales = graph_queries.constant_value(node.inputs[-1 if op == "Upsample" else 2]) if len(node.inputs) > (1 if op == "Upsample" else 2) else None
        if scales is None or scales.size == 0 or scales[len(scales) + channel_axis] != 1:
            raise Unsafe(f"{op} '{node.name}' does not keep the channel count by a constant scale of 1")
        return
    if op == "Pad":
        pads = node.attrs.get("pads")
        if pads is None and len(node.inputs) > 1:
            pads = graph_queries.constant_value(node.inputs[1])
        ndim = rank(node.inputs[0], 0)
        if pads is None or len(node.inputs) > 3 or ndim == 0 or pads[ndim + channel_axis] or pads[2 * ndim + channel_axis]:
            raise Unsafe(f"Pad '{node.name}' pads the channels")
        return
    for tensor in node.inputs[1:]:
        value = graph_queries.constant_value(tensor)
        if tensor.name and (value is None or value.size != 1):
            raise Unsafe(f"{op} '{node.name}' has a non-scalar extra input")


def is_depthwise(node: gs.Node, tensor: gs.Tensor) -> bool:
    weight = graph_queries.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    groups = node.attrs.get("group", 1)
    return node.op == "Conv" and weight is not None and groups > 1 and weight.shape[1] == 1 and weight.shape[0] == groups == dim(tensor, -3)


def rank(tensor: gs.Tensor, default: int) -> int:
    return len(tensor.shape) if tensor.shape is not None else default


def dim(tensor: gs.Tensor, axis: int):
    value = graph_queries.constant_value(tensor)
    shape = value.shape if value is not None else tensor.shape
    if shape is None or len(shape) < -axis:
        return None
    dim = shape[axis]
    return int(dim) if isinstance(dim, (int, np.integer)) else None


def axis_of(axis: int, tensor: gs.Tensor) -> int:
    ndim = rank(tensor, 0)
    return axis - ndim if axis >= 0 else axis
