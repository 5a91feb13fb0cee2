"""Reshape (merge leading axes) → Transpose (first axis kept) → Reshape (split them again) → one Transpose.

The dynamo exporter writes the key transpose of scaled-dot-product attention this way
(heads-first K flattened to (B·N, L, H), swapped to (B·N, H, L), reshaped to (B, N, H, L));
it is a plain `Transpose<0,1,3,2>` in standard ops, which `transpose_chain` can then merge.
"""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from graphopt import tensor_shapes
from graphopt_plugins.fuse._pattern import drop, emit, sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_flattened_transpose"]

RULE = "flattened_transpose"


def fuse_flattened_transpose(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Reshape(Transpose<0,…>(Reshape(x, [∏x[:p], x[p:]…])), [x[:p]…, …])` as one Transpose of x.

    Decided on inferred static shapes only: the first Reshape must merge exactly the leading
    `p ≥ 2` axes of x, the Transpose must keep that merged axis first, and the second Reshape
    must split it back into the same leading axes and keep the transposed rest. Must not fire
    when a shape is unknown or dynamic, an intermediate has other readers or is a graph
    output, or the reshapes regroup anything else (that would move elements across rows).
    """
    rewritten = 0
    for merge in list(graph.nodes):
        if merge.op != "Reshape" or not merge.outputs or not merge.inputs:
            continue
        x, merged = merge.inputs[0], merge.outputs[0]
        if not (tensor_shapes.is_static_shape(x.shape) and tensor_shapes.is_static_shape(merged.shape)) or len(x.shape) < 3:
            continue
        lead = _merged_lead(list(x.shape), list(merged.shape))
        if lead is None:
            continue
        transpose = sole_reader(merged, ctx)
        if transpose is None or transpose.op != "Transpose":
            continue
        perm = [int(axis) for axis in transpose.attrs.get("perm", [])]
        split = sole_reader(transpose.outputs[0], ctx)
        if not perm or perm[0] != 0 or split is None or split.op != "Reshape":
            ctx.near_miss(RULE, merge, "the merged axes are not kept first by one Transpose then split by a Reshape")
            continue
        swapped, result = transpose.outputs[0], split.outputs[0]
        expected = list(x.shape[:lead]) + list(swapped.shape[1:]) if tensor_shapes.is_static_shape(swapped.shape) else None
        if expected is None or not tensor_shapes.is_static_shape(result.shape) or list(result.shape) != expected:
            ctx.near_miss(RULE, merge, "the second Reshape does not split the merged axes back")
            continue
        combined = list(range(lead)) + [lead - 1 + axis for axis in perm[1:]]
        emit(ctx, "Transpose", [x], result, {"perm": combined})
        drop([merge, transpose, split])
        rewritten += 1
    return rewritten


def _merged_lead(source: list[int], merged: list[int]) -> int | None:
    """p when `merged` is `source` with its first p ≥ 2 axes multiplied into one, else None."""
    lead = len(source) - len(merged) + 1
    if lead < 2 or merged[1:] != source[lead:] or merged[0] != math.prod(source[:lead]):
        return None
    return lead
