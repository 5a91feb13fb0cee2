"""Transpose∘Transpose: merged into one Transpose, or removed when the composition is the identity."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import local_producer_pairs
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["merge_transpose_chains"]

RULE = "transpose_chain"


def merge_transpose_chains(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Transpose(p2)(Transpose(p1)(x))` as `Transpose(p1[p2])(x)`, or as `x` when that is the identity.

    Fires when the inner Transpose's output is read by the outer one only (otherwise the inner
    one must stay and nothing is saved) and both permutations are known (an absent `perm`
    means reversal, which needs the rank). The outer node keeps its output tensor, so a graph
    output keeps its name: an identity composition then becomes an Identity only if the
    output is a graph output fed straight from `x` (cleanup decides), otherwise the readers
    are pointed at `x`.
    """
    rewritten = 0
    for outer, inner in local_producer_pairs(graph, ctx, ("Transpose",), ("Transpose",)):
        if len(graph_queries.consumers(inner.outputs[0])) != 1 or ctx.is_graph_output(inner.outputs[0]):
            ctx.near_miss(RULE, outer, "the inner Transpose's output has other readers")
            continue
        inner_perm, outer_perm = _perm(inner), _perm(outer)
        if inner_perm is None or outer_perm is None:
            ctx.near_miss(RULE, outer, "a permutation is implicit and the rank is unknown")
            continue
        source = inner.inputs[0]
        merged = [inner_perm[axis] for axis in outer_perm]
        inner.inputs.clear()
        inner.outputs.clear()
        if merged == sorted(merged) and not ctx.is_graph_output(outer.outputs[0]):
            result = outer.outputs[0]
            outer.inputs.clear()
            outer.outputs.clear()
            graph_queries.replace_all_uses(result, source)
        else:
            outer.inputs[0] = source
            outer.attrs["perm"] = merged
            if merged == sorted(merged):
                outer.op, outer.attrs = "Identity", {}
        rewritten += 1
    return rewritten


def _perm(node: gs.Node) -> list[int] | None:
    if "perm" in node.attrs:
        return [int(axis) for axis in node.attrs["perm"]]
    shape = node.inputs[0].shape
    return list(reversed(range(len(shape)))) if shape is not None else None
