"""Unsqueeze∘Unsqueeze and Squeeze∘Squeeze merged into one node."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext
from graphopt_plugins.fuse.squeeze_pair import axes_of

__all__ = ["merge_squeeze_chains"]

RULE = "squeeze_chain"


def merge_squeeze_chains(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Unsqueeze(Unsqueeze(x, a), b)` as one Unsqueeze, and `Squeeze(Squeeze(x, a), b)` as one Squeeze.

    Exporters unsqueeze an attention mask twice (`mask[:, None, None, :]`). An Unsqueeze's axes
    index its output: `b` in the final rank, `a` in the rank between, whose dims are the final
    ones not in `b`, in order; so the merged axes are `b` plus, for each `p` in `a`, the `p`-th
    position not in `b`. A Squeeze's axes index its input, so there the roles swap. Negative
    axes are resolved with the ranks, known or not needed.

    Does not fire when: either axis list is absent (Squeeze of every unit axis) or not a
    constant; an axis is negative and the rank it needs is unknown; the middle tensor has
    another reader or is a graph output.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for outer in list(graph.nodes):
        if outer.op not in ("Squeeze", "Unsqueeze") or not outer.inputs:
            continue
        inner = graph_queries.producer(outer.inputs[0])
        if inner is None or inner.op != outer.op or id(inner) not in local or not inner.inputs:
            continue
        if sole_reader(outer.inputs[0], ctx) is not outer:
            ctx.near_miss(RULE, outer, f"the first {inner.op}'s output has other readers")
            continue
        merged = _merged_axes(inner, outer)
        if merged is None:
            ctx.near_miss(RULE, outer, "the axes are implicit, not constants, or negative in an unknown rank")
            continue
        outer.inputs[0] = inner.inputs[0]
        if "axes" in outer.attrs:
            outer.attrs["axes"] = merged
        else:
            outer.inputs[1] = ctx.constant(f"{outer.name or outer.op}_axes", np.asarray(merged, dtype=np.int64))
        inner.inputs.clear()
        inner.outputs.clear()
        rewritten += 1
    return rewritten


def _merged_axes(inner: gs.Node, outer: gs.Node) -> list[int] | None:
    if outer.op == "Unsqueeze":
        final = outer.outputs[0].shape
        rank = len(final) if final is not None else None
        second = axes_of(outer, rank)
        first = axes_of(inner, rank - len(second) if rank is not None and second is not None else None)
        return None if first is None or second is None else _compose(second, first)
    source = inner.inputs[0].shape
    rank = len(source) if source is not None else None
    first = axes_of(inner, rank)
    second = axes_of(outer, rank - len(first) if rank is not None and first is not None else None)
    return None if first is None or second is None else _compose(first, second)


def _compose(outer_axes: set[int], inner_axes: set[int]) -> list[int]:
    """`outer_axes` plus, for each `p` in `inner_axes`, the `p`-th position not in `outer_axes`."""
    remaining, candidate = [], 0
    while len(remaining) <= max(inner_axes):
        if candidate not in outer_axes:
            remaining.append(candidate)
        candidate += 1
    return sorted(outer_axes | {remaining[p] for p in inner_axes})
