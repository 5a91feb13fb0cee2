"""Shared by the folds into weights: per-channel constants, and scaling a linear node's channels.

A *linear* node here is a Conv, ConvTranspose, Gemm or MatMul whose weight is a compile-time
constant (an initializer, a Constant node, or a ConstantOfShape fill with a constant shape). Its output channels can absorb `y * scale + shift` (the BN fold, per-channel
Mul/Add/Sub/Div after it) and its input channels can absorb `x * scale` (and `x + shift` where
that is exact) before it. New weights are computed in float64 and stored in the weight's dtype,
always as new constants: a weight shared with another node is never changed in place.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import FLOATS
from graphopt_plugins.fuse.rule import FuseContext

__all__ = [
    "LINEAR_OPS",
    "constant_operand",
    "constant_operand_sites",
    "channel_vector",
    "channel_operand",
    "output_channels",
    "input_channels",
    "fold_after",
    "fold_before",
    "take_output",
    "bypass",
]

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def constant_operand_sites(graph: gs.Graph, ops: tuple[str, ...]) -> Iterator[tuple[gs.Node, gs.Tensor, np.ndarray, int]]:
    """(node, its variable operand, the constant's value, the constant's input index) for each
    node of the level whose op is in `ops` and that has exactly one constant operand."""
    for node in list(graph.nodes):
        if node.op in ops and (operands := constant_operand(node)) is not None:
            yield (node, *operands)


def constant_operand(node: gs.Node) -> tuple[gs.Tensor, np.ndarray, int] | None:
    """(the variable operand, the constant's value, the constant's input index) of a binary node."""
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    values = [graph_queries.constant_value(tensor) for tensor in node.inputs]
    if (values[0] is None) == (values[1] is None):
        return None
    index = 0 if values[0] is not None else 1
    return node.inputs[1 - index], np.asarray(values[index]), index


def channel_vector(value: np.ndarray, rank: int | None, axis: int, channels: int) -> np.ndarray | None:
    """`value` as a length-`channels` vector, if broadcasting it against a rank-`rank` tensor
    varies only along `axis` and neither grows the tensor's rank nor its shape."""
    if rank is None or value.ndim > rank or value.dtype.type not in FLOATS:
        return None
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if any(size != 1 for index, size in enumerate(shape) if index != axis % rank):
        return None
    if shape[axis % rank] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,)) if value.size else None


def channel_operand(op: str, value: np.ndarray, channels: tuple[int, int, int], side: str) -> np.ndarray | str:
    """The constant of a Mul/Div/Add/Sub as a per-channel vector along `channels` (rank, axis,
    count of a linear node's `side` channels: "input"/"output"), or why it is not one."""
    rank, axis, count = channels
    vector = channel_vector(value, rank, axis, count)
    if vector is None or (op == "Div" and not np.all(vector)):
        return f"the constant is not a non-zero per-{side}-channel float"
    return vector


def _known_value(tensor: gs.Tensor) -> np.ndarray | None:
    """A constant's value, or the filled tensor a ConstantOfShape with a constant shape makes.

    cleanup leaves a large ConstantOfShape unfolded to keep the file small; a fold that must
    change such a weight materializes it (the model grows to the weight's real size).
    """
    value = graph_queries.constant_value(tensor)
    if value is not None:
        return value
    node = graph_queries.producer(tensor)
    if node is None or node.op != "ConstantOfShape" or not node.inputs:
        return None
    shape = graph_queries.constant_value(node.inputs[0])
    fill = node.attrs.get("value")
    if shape is None:
        return None
    fill = fill.values if isinstance(fill, gs.Constant) else np.zeros(1, np.float32)
    return np.full([int(d) for d in np.asarray(shape).reshape(-1)], fill.reshape(-1)[0], dtype=fill.dtype)


def _weight(node: gs.Node) -> np.ndarray | None:
    if node.op not in LINEAR_OPS or len(node.inputs) < 2 or len(node.outputs) != 1:
        return None
    weight = _known_value(node.inputs[1])
    if weight is None or weight.dtype.type not in FLOATS:
        return None
    if node.op == "MatMul" and weight.ndim != 2:
        return None
    bias = _optional(node, 2)
    if node.op != "MatMul" and bias is not None and _known_value(bias) is None:
        return None  # a variable bias cannot take a shift
    return weight


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def output_channels(node: gs.Node) -> tuple[int, int, int] | None:
    """(rank of the output, its channel axis, the channel count) of a linear node, or None."""
    weight = _weight(node)
    if weight is None:
        return None
    if node.op == "Conv":
        return weight.ndim, 1, weight.shape[0]
    if node.op == "ConvTranspose":
        return weight.ndim, 1, weight.shape[1] * int(node.attrs.get("group", 1))
    if node.op == "Gemm":
        return 2, 1, weight.shape[0 if node.attrs.get("transB", 0) else 1]
    rank = _rank(node.inputs[0])  # A (…, K) @ B (K, N) is (…, N); a 1-D A gives a 1-D (N,)
    return (rank, -1, weight.shape[1]) if rank is not None and rank >= 1 else None


def input_channels(node: gs.Node) -> tuple[int, int, int] | None:
    """(rank of the data input, its channel axis, the channel count) a linear node reads, or None."""
    weight = _weight(node)
    if weight is None or node.op == "ConvTranspose":
        return None
    if node.op == "Conv":
        return weight.ndim, 1, weight.shape[1] * int(node.attrs.get("group", 1))
    if node.op == "Gemm":
        return 2, 0 if node.attrs.get("transA", 0) else 1, weight.shape[1 if node.attrs.get("transB", 0) else 0]
    rank = _rank(node.inputs[0])
    return (rank, -1, weight.shape[0]) if rank is not None and rank >= 1 else None


def _optional(node: gs.Node, index: int) -> gs.Tensor | None:
    """The node's `index`-th input, or None when it is absent or left empty."""
    if len(node.inputs) <= index or not node.inputs[index].name:
        return None
    return node.inputs[index]


def _bias(node: gs.Node, length: int) -> np.ndarray:
    """The bias (Conv/ConvTranspose B, Gemm beta*C) in float64; zeros when there is none."""
    tensor = _optional(node, 2)
    if tensor is None:
        return np.zeros(length)
    bias = np.asarray(_known_value(tensor), dtype=np.float64)
    return bias * float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else bias


def _set_input(node: gs.Node, index: int, values: np.ndarray, dtype, ctx: FuseContext) -> None:
    constant = ctx.constant(f"{node.name or node.op}_w{index}", np.asarray(values, dtype=dtype))
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = constant


def fold_after(node: gs.Node, scale: np.ndarray, shift: np.ndarray, ctx: FuseContext) -> bool:
    """Rewrites the linear `node` to compute `node(x) * scale + shift` per output channel.

    A MatMul has no bias: with a non-zero shift it becomes a Gemm, which needs both operands
    2-D; otherwise this returns False and changes nothing.
    """
    weight = _weight(node)
    dtype = weight.dtype
    has_shift = bool(np.any(shift != 0))
    if node.op == "MatMul" and has_shift and _rank(node.inputs[0]) != 2:
        return False
    scale = np.asarray(scale)
    channel_scale = scale.astype(dtype)  # one product per weight: rounded once, in the weight's dtype
    if node.op == "MatMul" and has_shift:
        node.op, node.attrs = "Gemm", {}
    had_bias = _optional(node, 2) is not None
    bias = _bias(node, len(scale)) * scale + shift
    # A bias Add scales by ones, and w * 1 == w: copying the weight for it cost more than the rest.
    if not np.all(channel_scale == 1):
        _set_input(node, 1, _scaled_output_channels(node, weight, channel_scale), dtype, ctx)
    if node.op != "MatMul" and (has_shift or had_bias):
        _set_input(node, 2, bias, dtype, ctx)
        if node.op == "Gemm":
            node.attrs["beta"] = 1.0
    return True


def _scaled_output_channels(node: gs.Node, w: np.ndarray, channel_scale: np.ndarray) -> np.ndarray:
    """The weight `w` of the linear `node` with each output channel multiplied by `channel_scale`."""
    if node.op == "Conv":
        return w * channel_scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if node.op == "ConvTranspose":
        group = int(node.attrs.get("group", 1))
        grouped = w.reshape((group, w.shape[0] // group) + w.shape[1:])
        return (grouped * channel_scale.reshape((group, 1, -1) + (1,) * (w.ndim - 2))).reshape(w.shape)
    if node.op == "Gemm":
        return w * (channel_scale[:, None] if node.attrs.get("transB", 0) else channel_scale[None, :])
    return w * channel_scale[None, :]


def fold_before(node: gs.Node, scale: np.ndarray | None, shift: np.ndarray | None, ctx: FuseContext) -> bool:
    """Rewrites the linear `node` to compute `node(x * scale)` or `node(x + shift)` per input channel.

    A shift is exact only where every output sees whole kernel windows of real input: a Conv
    with zero padding (with padding, the padded zeros would become `-shift`-offset values), and
    a Gemm; a MatMul has no bias to take it. Returns False (unchanged) where it is not exact.
    """
    weight = _weight(node)
    dtype = weight.dtype
    w = weight
    scale = scale.astype(dtype) if scale is not None else None  # a product is rounded once, in the weight's dtype
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        out_channels, per_group = w.shape[0], w.shape[1]
        # input channel of W[m, c] is (m // (M/g)) * (C/g) + c
        owner = np.arange(out_channels) // (out_channels // group)
        columns = owner[:, None] * per_group + np.arange(per_group)[None, :]
        if scale is not None:
            _set_input(node, 1, w * scale[columns].reshape(w.shape[:2] + (1,) * (w.ndim - 2)), dtype, ctx)
            return True
        if not _zero_padding(node):
            return False
        extra = (w.astype(np.float64) * shift[columns].reshape(w.shape[:2] + (1,) * (w.ndim - 2))).reshape(out_channels, -1).sum(axis=1)
        _set_input(node, 2, _bias(node, out_channels) + extra, dtype, ctx)
        return True
    trans_b = node.op == "Gemm" and node.attrs.get("transB", 0)
    w_kn = w.T if trans_b else w  # (K, N)
    if scale is not None:
        scaled = w_kn * scale[:, None]
        _set_input(node, 1, scaled.T if trans_b else scaled, dtype, ctx)
        return True
    if node.op != "Gemm":
        return False
    alpha = float(node.attrs.get("alpha", 1.0))
    _set_input(node, 2, _bias(node, w_kn.shape[1]) + alpha * (shift @ w_kn.astype(np.float64)), dtype, ctx)
    node.attrs["beta"] = 1.0
    return True


def _zero_padding(node: gs.Node) -> bool:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return False
    return not any(int(p) for p in node.attrs.get("pads", ()))


def take_output(node: gs.Node, folded: gs.Node) -> None:
    """Makes `node` write the output of `folded` (which follows it and is now redundant)."""
    result = folded.outputs[0]
    folded.inputs.clear()
    folded.outputs.clear()
    node.outputs[0] = result


def bypass(node: gs.Node, source: gs.Tensor, ctx: FuseContext) -> bool:
    """Removes `node`, whose single output equals `source`; False (unchanged) where names forbid.

    A graph output keeps its name: then `source`'s producer writes it instead, if `source` is
    read by `node` alone and is not itself a graph input or output.
    """
    result = node.outputs[0]
    if not ctx.is_graph_output(result):
        node.inputs.clear()
        node.outputs.clear()
        graph_queries.replace_all_uses(result, source)
        return True
    writer = graph_queries.producer(source)
    if writer is None or len(graph_queries.consumers(source)) != 1 or ctx.is_graph_output(source):
        return False
    if not any(node is writer for node in ctx.graph.nodes):  # written in an outer graph
        return False
    if any(tensor is source for tensor in ctx.graph.inputs):
        return False
    index = next(i for i, tensor in enumerate(writer.outputs) if tensor is source)
    node.inputs.clear()
    node.outputs.clear()
    writer.outputs[index] = result
    return True
