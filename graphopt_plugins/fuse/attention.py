"""Scaled dot-product attention with its head split/merge → com.microsoft MultiHeadAttention.

The matching is `attention_match`; this module emits the node and its `attention_bias`.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.fuse._pattern import drop, emit
from graphopt_plugins.fuse.attention_match import AttentionMiss, match_attention, same_dim
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_attention"]

RULE = "attention"
_HEADS_FIRST = [0, 2, 1, 3]  # (B, S, N, H) ↔ (B, N, S, H)
_KEYS_TRANSPOSED = [0, 2, 3, 1]  # (B, L, N, H) → (B, N, H, L)
_SWAP_LAST = [0, 1, 3, 2]


def fuse_attention(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites multi-head scaled dot-product attention as contrib MultiHeadAttention (target=onnxruntime).

    The pattern, as both torch exporters write hand-written or decomposed attention:
    `q, k, v` (B, S|L, N·H) each `Reshape` to (B, S|L, N, H) and `Transpose` to heads-first
    (keys straight to (B, N, H, L), or heads-first then last-two swapped); scores
    `MatMul(Q, Kᵀ)` scaled by a scalar `Div`/`Mul` on the scores or `Mul`s on Q and K (the
    √scale form); an optional additive mask `Add`; `Softmax` over the last axis; `MatMul`
    with V; `Transpose` back and `Reshape` to (B, S, N·H). Reshape shapes are constants or,
    with dynamic axes, computed ones whose inferred result shows the split (same symbolic B, S).
    The mask becomes `attention_bias`, expanded over (S, L) as MultiHeadAttention requires.
    Float32/float16 only. Must not fire when any inner tensor has other readers or is a graph
    output, a permutation or reshape does not split/merge heads exactly, the softmax is not
    over the keys, or a scale is not a scalar constant.
    """
    rewritten = 0
    for softmax in list(graph.nodes):
        if softmax.op != "Softmax" or not softmax.outputs:
            continue
        try:
            site = match_attention(softmax, ctx)
        except AttentionMiss as miss:
            ctx.near_miss(RULE, softmax, str(miss))
            continue
        inputs = [site["q"], site["k"], site["v"]]
        if site["bias"] is not None:
            inputs += [gs.Variable.empty(), gs.Variable.empty(), _attention_bias(site, ctx)]
        emit(ctx, "MultiHeadAttention", inputs, site["output"],
             {"num_heads": site["heads"], "scale": float(site["scale"])}, domain="com.microsoft")
        drop(site["nodes"])
        rewritten += 1
    return rewritten


def _attention_bias(site: dict, ctx: FuseContext) -> gs.Tensor:
    """The additive mask expanded over (S, L) where it broadcasts, as MultiHeadAttention's `attention_bias` needs.

    `Expand` to (1, 1, S, L) keeps the mask's own batch and head dimensions. A static S or L
    is a constant; a dynamic one is read at run time with `Shape` + `Gather` of Q or K.
    """
    bias, query, key = site["bias"], site["q"], site["k"]
    dims = [1] * (4 - len(bias.shape)) + list(bias.shape)
    rows, cols = query.shape[1], key.shape[1]
    if len(bias.shape) == 4 and same_dim(dims[2], rows) and same_dim(dims[3], cols):
        return bias
    if tensor_shapes.is_static_shape([rows, cols]):
        target = [1, 1, int(rows), int(cols)]
        for reader in graph_queries.consumers(bias):  # another attention block already expanded this mask
            if reader.op == "Expand" and reader.inputs[0] is bias and reader.outputs and len(reader.inputs) == 2:
                shape_value = graph_queries.constant_value(reader.inputs[1])
                if shape_value is not None and [int(d) for d in np.asarray(shape_value).reshape(-1)] == target:
                    return reader.outputs[0]
        shape = ctx.constant("attention_bias_shape", np.array(target, dtype=np.int64))
    else:
        pieces = [ctx.constant("attention_bias_ones", np.ones(2, dtype=np.int64))]
        for tensor, size in ((query, rows), (key, cols)):
            pieces.append(ctx.constant("attention_bias_len", np.array([size], dtype=np.int64))
                          if isinstance(size, (int, np.integer)) else _runtime_length(tensor, ctx))
        shape = ctx.variable("attention_bias_shape", dtype=np.int64, shape=[4])
        ctx.graph.nodes.append(gs.Node("Concat", ctx.fresh_name("Concat"), {"axis": 0}, inputs=pieces, outputs=[shape]))
    expanded = ctx.variable("attention_bias", dtype=bias.dtype, shape=dims[:2] + [rows, cols])
    ctx.graph.nodes.append(gs.Node("Expand", ctx.fresh_name("Expand"), inputs=[bias, shape], outputs=[expanded]))
    return expanded


def _runtime_length(tensor: gs.Tensor, ctx: FuseContext) -> gs.Tensor:
    """`Shape(tensor)[1:2]`: the sequence length of a (B, S, D) tensor at run time."""
    shape = ctx.variable("attention_shape", dtype=np.int64, shape=[3])
    length = ctx.variable("attention_len", dtype=np.int64, shape=[1])
    ctx.graph.nodes.append(gs.Node("Shape", ctx.fresh_name("Shape"), inputs=[tensor], outputs=[shape]))
    ctx.graph.nodes.append(gs.Node("Gather", ctx.fresh_name("Gather"), {"axis": 0},
                                   inputs=[shape, ctx.constant("attention_axis", np.array([1], dtype=np.int64))],
                                   outputs=[length]))
    return length
