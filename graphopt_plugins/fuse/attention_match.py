"""Finding scaled dot-product attention with its head split/merge: the site `attention` rewrites.

`match_attention(softmax, ctx)` returns the site (q, k, v, heads, scale, the additive mask,
the output, the nodes it replaces) or raises `AttentionMiss` with the reason it is not one.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.fuse._pattern import FLOAT_16_32, has_dtype, owned, sole_reader, split_scalar
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["match_attention", "AttentionMiss", "same_dim"]

_HEADS_FIRST = [0, 2, 1, 3]  # (B, S, N, H) ↔ (B, N, S, H)
_KEYS_TRANSPOSED = [0, 2, 3, 1]  # (B, L, N, H) → (B, N, H, L)
_SWAP_LAST = [0, 1, 3, 2]


class AttentionMiss(Exception):
    """A site that does not match, with the reason (raised and caught inside this module only)."""


def match_attention(softmax: gs.Node, ctx: FuseContext) -> dict:
    scores = softmax.inputs[0]
    if not has_dtype(scores, FLOAT_16_32):
        raise AttentionMiss(f"MultiHeadAttention takes float32/float16, not {scores.dtype}")
    axis = int(softmax.attrs.get("axis", -1 if ctx.opset >= 13 else 1))
    if axis not in (-1, 3):
        raise AttentionMiss(f"the Softmax is over axis {axis}, not the keys")
    nodes = [softmax]
    bias = None
    producer = _owned_producer(scores, ctx, "the Softmax input")
    if producer.op == "Add":
        nodes.append(producer)
        for candidate, other in (producer.inputs, reversed(producer.inputs)):
            inner = graph_queries.producer(candidate)
            if inner is not None and inner.op in ("Div", "Mul", "MatMul") and owned(candidate, ctx):
                scores, bias = candidate, other
                break
        else:
            raise AttentionMiss("the Softmax input is an Add of no scaled MatMul")
        producer = graph_queries.producer(scores)
    scale = 1.0
    if producer.op in ("Div", "Mul"):
        split = split_scalar(producer)
        if split is None or split[1] == 0 or (producer.op == "Div" and producer.inputs[0] is not split[0]):
            raise AttentionMiss(f"{producer.op} '{producer.name}' does not scale the scores by a scalar constant")
        scale = 1.0 / split[1] if producer.op == "Div" else split[1]
        nodes.append(producer)
        producer = _owned_producer(split[0], ctx, "the scaled scores")
    if producer.op != "MatMul":
        raise AttentionMiss("the scores are not a MatMul")
    nodes.append(producer)
    query, q_scale, q_nodes = _heads(producer.inputs[0], _HEADS_FIRST, ctx, "Q")
    key, k_scale, k_nodes = _keys(producer.inputs[1], ctx)
    context = sole_reader(softmax.outputs[0], ctx)
    if context is None or context.op != "MatMul" or context.inputs[0] is not softmax.outputs[0]:
        raise AttentionMiss("the probabilities are not read by one MatMul with V")
    value, v_scale, v_nodes = _heads(context.inputs[1], _HEADS_FIRST, ctx, "V")
    if v_scale != 1.0:
        raise AttentionMiss("V is scaled")
    merge = sole_reader(context.outputs[0], ctx)
    if merge is None or merge.op != "Transpose" or _perm(merge) != _HEADS_FIRST:
        raise AttentionMiss("the context is not transposed back to (B, S, N, H)")
    reshape = sole_reader(merge.outputs[0], ctx)
    heads, head_size = query["heads"], query["head_size"]
    if key["heads"] != heads or value["heads"] != heads or key["head_size"] != head_size:
        raise AttentionMiss("Q, K and V are split into different heads")
    if reshape is None or reshape.op != "Reshape" or not _merges(reshape, query["source"], heads * value["head_size"]):
        raise AttentionMiss("the context is not reshaped back to (B, S, N·H)")
    nodes += q_nodes + k_nodes + v_nodes + [context, merge, reshape]
    if bias is not None:
        _check_bias(bias, query["source"], key["source"], heads)
    return {
        "q": query["source"], "k": key["source"], "v": value["source"], "bias": bias, "heads": heads,
        "scale": scale * q_scale * k_scale, "output": reshape.outputs[0], "nodes": nodes,
    }


def _owned_producer(tensor: gs.Tensor, ctx: FuseContext, what: str) -> gs.Node:
    node = graph_queries.producer(tensor)
    if node is None or not owned(tensor, ctx):
        raise AttentionMiss(f"{what} is not an owned intermediate tensor")
    return node


def _scaled(tensor: gs.Tensor, ctx: FuseContext, what: str) -> tuple[gs.Node, float, list[gs.Node]]:
    """The producer behind an optional scalar `Mul` on `tensor`, the scalar, and the Mul."""
    node = _owned_producer(tensor, ctx, what)
    if node.op == "Mul":
        split = split_scalar(node)
        if split is None:
            raise AttentionMiss(f"{what} is multiplied by something other than a scalar constant")
        return _owned_producer(split[0], ctx, what), split[1], [node]
    return node, 1.0, []


def _heads(tensor: gs.Tensor, perm: list[int], ctx: FuseContext, what: str) -> tuple[dict, float, list[gs.Node]]:
    transpose, scale, nodes = _scaled(tensor, ctx, what)
    if transpose.op != "Transpose" or _perm(transpose) != perm:
        raise AttentionMiss(f"{what} is not a Transpose<perm={perm}> of its head split")
    reshape = _owned_producer(transpose.inputs[0], ctx, f"{what}'s head split")
    split = _split(reshape) if reshape.op == "Reshape" else None
    if split is None:
        raise AttentionMiss(f"{what} is not reshaped from (B, S, N·H) to (B, S, N, H)")
    return split, scale, nodes + [transpose, reshape]


def _keys(tensor: gs.Tensor, ctx: FuseContext) -> tuple[dict, float, list[gs.Node]]:
    """Kᵀ as (B, N, H, L): `Transpose<0,2,3,1>` of the split, `Transpose<0,1,3,2>` of heads-first K,
    or (dynamo's SDPA decomposition) heads-first K flattened to (B·N, L, H), swapped, reshaped back."""
    node, scale, muls = _scaled(tensor, ctx, "Kᵀ")
    if node.op == "Transpose" and _perm(node) == _SWAP_LAST:
        key, inner_scale, inner = _heads(node.inputs[0], _HEADS_FIRST, ctx, "K")
        return key, scale * inner_scale, muls + [node] + inner
    if node.op == "Reshape":
        key, inner_scale, inner = _flattened_swap(node, ctx)
        return key, scale * inner_scale, muls + inner
    start = split_scalar(muls[0])[0] if muls else tensor
    key, inner_scale, inner = _heads(start, _KEYS_TRANSPOSED, ctx, "Kᵀ")
    return key, scale * inner_scale, muls + inner


def _flattened_swap(unflatten: gs.Node, ctx: FuseContext) -> tuple[dict, float, list[gs.Node]]:
    """`Reshape(B,N,H,L) ∘ Transpose<0,2,1> ∘ Reshape(B·N|-1, L, H)` of heads-first K: its Kᵀ."""
    swap = _owned_producer(unflatten.inputs[0], ctx, "the swapped keys")
    flatten = _owned_producer(swap.inputs[0], ctx, "the flattened keys") if swap.op == "Transpose" else None
    if flatten is None or _perm(swap) != [0, 2, 1] or flatten.op != "Reshape":
        raise AttentionMiss("Kᵀ is not a Transpose of K nor a flattened swap of it")
    key, scale, inner = _heads(flatten.inputs[0], _HEADS_FIRST, ctx, "K")
    source, heads, head_size = key["source"], key["heads"], key["head_size"]
    batch, length = (source.shape[0], source.shape[1]) if source.shape is not None else (None, None)
    flat, back = _shape_constant(flatten), _shape_constant(unflatten)
    if not tensor_shapes.is_static_shape([batch, length]) or flat is None or back is None:
        raise AttentionMiss("the flattened swap of K needs static batch and key length")
    if flat not in ([-1, length, head_size], [batch * heads, length, head_size]) \
            or back not in ([batch, heads, head_size, length], [-1, heads, head_size, length]):
        raise AttentionMiss("the flattened swap of K does not give (B, N, H, L)")
    return key, scale, [unflatten, swap, flatten] + inner


def _perm(node: gs.Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    return None if perm is None else [int(axis) for axis in perm]


def _shape_constant(reshape: gs.Node) -> list[int] | None:
    value = graph_queries.constant_value(reshape.inputs[1]) if len(reshape.inputs) == 2 else None
    return None if value is None else [int(d) for d in np.asarray(value).reshape(-1)]


def _leading_match(dims: list[int], source: gs.Tensor, allowzero: bool) -> bool:
    """Whether the first two reshape dims keep the source's (B, S): each 0 (copy), -1, or equal."""
    known = list(source.shape[:2])
    if dims.count(-1) > 1:
        return False
    for dim, actual in zip(dims, known):
        if dim == 0 and not allowzero:
            continue
        if dim == -1:
            continue
        if not isinstance(actual, (int, np.integer)) or dim != actual:
            return False
    return True


def same_dim(first, second) -> bool:
    """Equal known dimensions: the same integer, or the same symbolic name (ONNX: same name, same size)."""
    if isinstance(first, (int, np.integer)) and isinstance(second, (int, np.integer)):
        return int(first) == int(second)
    return isinstance(first, str) and bool(first) and first == second


def _split(reshape: gs.Node) -> dict | None:
    """The head split (B, S, N·H) → (B, S, N, H), from a constant shape or, if computed, the inferred one."""
    source, dims = reshape.inputs[0], _shape_constant(reshape)
    if source.shape is None or len(source.shape) != 3 or not isinstance(source.shape[2], (int, np.integer)):
        return None
    width = int(source.shape[2])
    if dims is None:  # a shape computed at run time (dynamic axes): trust shape inference's result
        out = reshape.outputs[0].shape
        if out is None or len(out) != 4 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in out[2:]) \
                or not all(same_dim(a, b) for a, b in zip(out[:2], source.shape[:2])):
            return None
        dims = [0, 0, int(out[2]), int(out[3])]
    elif len(dims) != 4 or not _leading_match(dims[:2], source, bool(reshape.attrs.get("allowzero", 0))):
        return None
    heads, head_size = dims[2], dims[3]
    if heads <= 0 or head_size <= 0 or width != heads * head_size:
        return None
    return {"source": source, "heads": heads, "head_size": head_size}


def _merges(reshape: gs.Node, query: gs.Tensor, width: int) -> bool:
    dims = _shape_constant(reshape)
    if query.shape is None:
        return False
    if dims is None:
        out = reshape.outputs[0].shape
        return out is not None and len(out) == 3 and same_dim(out[2], width) and all(
            same_dim(a, b) for a, b in zip(out[:2], query.shape[:2]))
    if len(dims) != 3 or dims[2] not in (width, -1):
        return False
    if dims[2] == -1 and -1 in dims[:2]:
        return False
    return _leading_match(dims[:2], query, bool(reshape.attrs.get("allowzero", 0)))


def _check_bias(bias: gs.Tensor, query: gs.Tensor, key: gs.Tensor, heads: int) -> None:
    """The mask must broadcast to (B|1, N|1, S, L): each dimension 1 or the same (known) size."""
    if bias.shape is None or len(bias.shape) > 4 or any(d is None or d == "" for d in bias.shape):
        raise AttentionMiss("the additive mask's shape is unknown (or of rank > 4)")
    if bias.dtype is not None and query.dtype is not None and np.dtype(bias.dtype) != np.dtype(query.dtype):
        raise AttentionMiss("the mask's dtype differs from the queries'")
    dims = [1] * (4 - len(bias.shape)) + list(bias.shape)
    wanted = [query.shape[0], heads, query.shape[1], key.shape[1]]
    if not all(same_dim(d, 1) or same_dim(d, w) for d, w in zip(dims, wanted)):
        raise AttentionMiss(f"the mask's shape {list(bias.shape)} does not broadcast to (B|1, N|1, S, L)")
