"""Attention's value bias moved past `softmax(…)·V` into the output projection's bias."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import bypass, constant_operand
from graphopt_plugins.fuse._pattern import FLOATS, sole_reader
from graphopt_plugins.fuse.rule import ONNXRUNTIME, FuseContext

__all__ = ["fold_value_bias"]

RULE = "value_bias"


def fold_value_bias(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `(P · L(t + b)) → M → MatMul(·, W) + c`, with `P = Softmax(…, axis=-1)`, as `(P · L(t)) → M → MatMul(·, W) + (c + b'·W)`.

    Each row of P sums to 1, so `P · (V + B) = P · V + B` wherever B does not vary along the
    axis P contracts: the value projection's bias passes the weighted sum unchanged. `L` and
    `M` are the head split and merge (Reshape/Transpose/Identity); the bias is carried through
    them as a broadcast pattern, and once it is again one value per feature (`b'`) it folds
    into the output projection's bias: one Add over the (batch, seq, width) values less per
    layer. Exact up to rounding: the rows of P sum to 1 within an ulp or so.

    Not under `fuse.target=onnxruntime`, where the `attention` rule takes the biases into
    MultiHeadAttention.

    Does not fire when: the weights are not the output of a Softmax over the last axis; the
    bias varies along the axis P contracts; a Reshape on the way does more than split or merge
    the axes the bias varies along (or its shapes are unknown); the merged result is not fed to
    a MatMul with a constant 2-D weight followed by an Add of a constant; a tensor on the way
    has other readers or is a graph output.
    """
    if ctx.target == ONNXRUNTIME:
        return 0
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for matmul in list(graph.nodes):
        if matmul.op != "MatMul" or len(matmul.inputs) != 2 or not _is_row_softmax(graph_queries.producer(matmul.inputs[0]), ctx.opset):
            continue
        found = _bias_above(matmul, local, ctx)
        if found is None:
            ctx.near_miss(RULE, matmul, "the values do not come, through Reshape/Transpose, from an Add of a constant bias")
            continue
        add, pattern = found
        if pattern.ndim < 2 or pattern.shape[-2] != 1:
            ctx.near_miss(RULE, matmul, "the bias varies along the axis the softmax weights sum over")
            continue
        result = matmul.outputs[0]
        if result.shape is None or len(result.shape) < pattern.ndim:
            continue
        pattern = pattern.reshape((1,) * (len(result.shape) - pattern.ndim) + pattern.shape)  # P may add batch axes
        below = _projection_below(result, pattern, local, ctx)
        if below is None:
            ctx.near_miss(RULE, matmul, "the result does not reach, through Reshape/Transpose, a MatMul with a constant weight and a bias Add")
            continue
        projection, bias_add, per_feature = below
        shift = per_feature.astype(np.float64) @ graph_queries.constant_value(projection.inputs[1]).astype(np.float64)
        if not bypass(add, constant_operand(add)[0], ctx):
            continue
        _, old, position = constant_operand(bias_add)
        bias_add.inputs[position] = ctx.constant(f"{bias_add.name or 'bias'}_with_value_bias", (old + shift).astype(old.dtype))
        rewritten += 1
    return rewritten


def _is_row_softmax(node: gs.Node | None, opset: int) -> bool:
    if node is None or node.op != "Softmax" or node.inputs[0].shape is None:
        return False
    rank = len(node.inputs[0].shape)
    # before opset 13 Softmax normalises the flattened [:axis] x [axis:] rows: the last axis
    # alone is axis = rank - 1 there too
    return int(node.attrs.get("axis", -1 if opset >= 13 else 1)) % rank == rank - 1


def _bias_above(matmul: gs.Node, local, ctx: FuseContext) -> tuple[gs.Node, np.ndarray] | None:
    """(the Add of the bias, the bias as a pattern broadcast over the MatMul's second operand)."""
    tensor, reader, steps = matmul.inputs[1], matmul, []
    while True:
        node = graph_queries.producer(tensor)
        if node is None or id(node) not in local or sole_reader(tensor, ctx) is not reader:
            return None
        if node.op in ("Identity", "Reshape", "Transpose"):
            steps.append(node)
            tensor, reader = node.inputs[0], node
            continue
        operands = constant_operand(node) if node.op == "Add" else None
        if operands is None or operands[1].dtype.type not in FLOATS or tensor.shape is None:
            return None
        rank = len(tensor.shape)
        if operands[1].ndim > rank:
            return None
        pattern = operands[1].reshape((1,) * (rank - operands[1].ndim) + operands[1].shape)
        for step in reversed(steps):
            pattern = _through(step, pattern)
            if pattern is None:
                return None
        return node, pattern


def _projection_below(tensor: gs.Tensor, pattern: np.ndarray, local, ctx: FuseContext):
    """(the output projection MatMul, its bias Add, the bias as one value per input feature) below `tensor`."""
    while True:
        reader = sole_reader(tensor, ctx)
        if reader is None or id(reader) not in local:
            return None
        if reader.op in ("Identity", "Reshape", "Transpose") and reader.inputs[0] is tensor:
            pattern = _through(reader, pattern)
            if pattern is None:
                return None
            tensor = reader.outputs[0]
            continue
        if reader.op != "MatMul" or reader.inputs[0] is not tensor or any(size != 1 for size in pattern.shape[:-1]):
            return None
        weight = graph_queries.constant_value(reader.inputs[1])
        if weight is None or weight.ndim != 2 or weight.shape[0] != pattern.shape[-1]:
            return None
        bias_add = sole_reader(reader.outputs[0], ctx)
        operands = constant_operand(bias_add) if bias_add is not None and bias_add.op == "Add" else None
        if operands is None or operands[1].shape[-1:] != (weight.shape[1],) or math.prod(operands[1].shape) != weight.shape[1]:
            return None
        return reader, bias_add, pattern.reshape(-1)


def _through(node: gs.Node, pattern: np.ndarray) -> np.ndarray | None:
    """The pattern after `node` (Identity, Transpose, or a Reshape that keeps the axes it does not vary along)."""
    if node.op == "Identity":
        return pattern
    if node.op == "Transpose":
        perm = node.attrs.get("perm", list(range(pattern.ndim))[::-1])
        return pattern.transpose([int(axis) for axis in perm]) if len(perm) == pattern.ndim else None
    before, after = node.inputs[0].shape, node.outputs[0].shape
    if before is None or after is None or len(before) != pattern.ndim:
        return None
    varying = [axis for axis, size in enumerate(pattern.shape) if size != 1]
    first = varying[0] if varying else pattern.ndim
    # the axes before the first varying one must come through unchanged (same dims, same places)
    if len(after) < first or list(before[:first]) != list(after[:first]) or any(d is None for d in before[:first]):
        return None
    tail_in, tail_out = before[first:], after[first:]
    if not all(isinstance(d, (int, np.integer)) and d > 0 for d in list(tail_in) + list(tail_out)):
        return None
    if math.prod(tail_in) != math.prod(tail_out):
        return None
    tail = np.broadcast_to(pattern, pattern.shape[:first] + tuple(int(d) for d in tail_in))
    return tail.reshape((1,) * first + tuple(int(d) for d in tail_out))
