"""A scalar Mul/Div after a MatMul of two activations (attention's 1/√d) folded into the projection feeding it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import LINEAR_OPS, bypass, constant_operand, constant_operand_sites, fold_after, output_channels
from graphopt_plugins.fuse._pattern import FLOATS, sole_reader
from graphopt_plugins.fuse.rule import ONNXRUNTIME, FuseContext

__all__ = ["fold_scalars_upstream"]

RULE = "scale_upstream"
# Ops a scalar factor passes through unchanged: they only move or regroup elements.
_LAYOUT_OPS = ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def fold_scalars_upstream(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `MatMul(a, b) * c` or `MatMul(a, b) / c`, `c` a scalar constant, by scaling the weights `a` or `b` comes from.

    Attention scores are `q·kᵀ / √d`. A scalar factor moves through a MatMul to either operand,
    through Identity/Reshape/Transpose/Squeeze/Unsqueeze/Flatten unchanged, through `+ bias` by scaling
    the bias too, and into a Conv/ConvTranspose/Gemm/MatMul with constant weights (weight and
    bias scaled): one elementwise op over the (batch, heads, seq, seq) scores less per layer.
    The first operand's path is tried, then the second's.

    Not under `fuse.target=onnxruntime`: there the `attention` rule takes the scale into
    MultiHeadAttention, and onnxruntime's own FusedMatMul absorbs it (as alpha) elsewhere.

    Does not fire when: `c` is not a float scalar, or is zero in a Div, or is the Div's left
    operand; the MatMul has a constant operand (`scale_after`'s case); a tensor on the path
    has another reader or is a graph output; the path meets another op before such a
    linear node.
    """
    if ctx.target == ONNXRUNTIME:
        return 0
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for node, scores, value, index in constant_operand_sites(graph, ("Mul", "Div")):
        matmul = graph_queries.producer(scores)
        if matmul is None or matmul.op != "MatMul" or id(matmul) not in local:
            continue
        if any(graph_queries.constant_value(tensor) is not None for tensor in matmul.inputs):
            continue  # scale_after folds it into the constant operand
        factor = _factor(node, value, index)
        if factor is None:
            ctx.near_miss(RULE, node, "the constant is not a non-zero float scalar on the right of a Div")
            continue
        if sole_reader(scores, ctx) is not node:
            ctx.near_miss(RULE, node, "the MatMul's output has other readers")
            continue
        path = next((found for found in (_path_to_linear(t, matmul, local, ctx) for t in matmul.inputs) if found), None)
        if path is None:
            ctx.near_miss(RULE, node, "neither operand comes, through layout ops and bias Adds, from a linear node with constant weights")
            continue
        if not bypass(node, scores, ctx):
            ctx.near_miss(RULE, node, "its result is a graph output that the MatMul's cannot be renamed to")
            continue
        linear, adds = path
        count = output_channels(linear)[2]
        fold_after(linear, np.full(count, factor), np.zeros(count), ctx)
        for add in adds:
            _, bias, position = constant_operand(add)
            add.inputs[position] = ctx.constant(f"{add.name or 'bias'}_scaled", (bias * factor).astype(bias.dtype))
        rewritten += 1
    return rewritten


def _factor(node: gs.Node, value: np.ndarray, index: int) -> float | None:
    if value.size != 1 or value.dtype.type not in FLOATS:
        return None
    scalar = float(value.reshape(-1)[0])
    if node.op == "Mul":
        return scalar
    if index == 0 or scalar == 0.0:
        return None
    return 1.0 / scalar


def _path_to_linear(tensor: gs.Tensor, reader: gs.Node, local, ctx: FuseContext) -> tuple[gs.Node, list[gs.Node]] | None:
    """(the linear node `tensor` comes from, the bias Adds on the way) when every step is one a scalar passes."""
    adds = []
    while True:
        node = graph_queries.producer(tensor)
        if node is None or id(node) not in local or sole_reader(tensor, ctx) is not reader:
            return None
        if node.op in _LAYOUT_OPS and node.inputs:
            reader, tensor = node, node.inputs[0]
        elif node.op == "Add" and (operands := constant_operand(node)) is not None and operands[1].dtype.type in FLOATS:
            adds.append(node)
            reader, tensor = node, operands[0]
        elif node.op in LINEAR_OPS and output_channels(node) is not None:
            return node, adds
        else:
            return None
