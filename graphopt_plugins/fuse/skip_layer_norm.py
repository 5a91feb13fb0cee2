"""Residual Add + LayerNormalization → com.microsoft SkipLayerNormalization (target=onnxruntime)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.fuse._pattern import FLOAT_16_32, drop, emit, has_dtype, owned
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_skip_layer_norm"]

RULE = "skip_layer_norm"


def fuse_skip_layer_norm(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `LayerNormalization(a + b, γ, β)` over the last axis as SkipLayerNormalization(a, b, γ, β).

    Fires when `a` and `b` have the same static shape of rank 2 or 3 (what the contrib kernel
    accepts without broadcasting) and γ (and β) are 1-D. When the sum has other readers (the
    residual stream) or is a graph output, it becomes the fused node's fourth output,
    `input_skip_bias_sum`, under its own name. Must not fire for a normalisation over more than
    the last axis, or for Adds that broadcast.
    """
    rewritten = 0
    for norm in list(graph.nodes):
        if norm.op != "LayerNormalization" or norm.domain not in (None, "", "ai.onnx") or len(norm.outputs) != 1:
            continue
        reason = _refusal(norm, ctx)
        if reason:
            ctx.near_miss(RULE, norm, reason)
            continue
        add = graph_queries.producer(norm.inputs[0])
        summed = add.outputs[0]
        outputs = [norm.outputs[0]]
        if not owned(summed, ctx):
            outputs += [gs.Variable.empty(), gs.Variable.empty(), summed]
            del add.outputs[0]
        emit(ctx, "SkipLayerNormalization", list(add.inputs) + list(norm.inputs[1:]), norm.outputs[0],
             {"epsilon": float(norm.attrs.get("epsilon", 1e-5))}, domain="com.microsoft", outputs=outputs)
        drop([add, norm])
        rewritten += 1
    return rewritten


def _refusal(norm: gs.Node, ctx: FuseContext) -> str | None:
    add = graph_queries.producer(norm.inputs[0])
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return "the input is not an Add"
    first, second = add.inputs
    if not has_dtype(first, FLOAT_16_32):
        return f"SkipLayerNormalization takes float32/float16, not {first.dtype}"
    if first is second:
        return "the Add adds a tensor to itself"
    shapes = [tensor.shape for tensor in add.inputs]
    if any(shape is None or not tensor_shapes.is_static_shape(shape) for shape in shapes) or list(shapes[0]) != list(shapes[1]):
        return "the Add's operands do not have the same static shape"
    rank = len(shapes[0])
    if rank not in (2, 3):
        return f"SkipLayerNormalization takes rank 2 or 3, not {rank}"
    if int(norm.attrs.get("axis", -1)) not in (-1, rank - 1):
        return "the normalisation is not over the last axis only"
    if any(tensor.shape is not None and len(tensor.shape) != 1 for tensor in norm.inputs[1:]):
        return "Scale or Bias is not 1-D"
    return None
