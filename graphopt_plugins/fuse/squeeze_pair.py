"""Unsqueeze∘Squeeze and Squeeze∘Unsqueeze on the same axes removed."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import bypass
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["remove_squeeze_pairs", "axes_of"]

RULE = "squeeze_pair"
_INVERSE = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}


def remove_squeeze_pairs(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Squeeze(Unsqueeze(x, a), a)` and `Unsqueeze(Squeeze(x, a), a)` as `x`.

    Both name their axes in the rank of the larger tensor (Unsqueeze's output, Squeeze's input):
    the one between them for Unsqueeze→Squeeze, the outer ones for Squeeze→Unsqueeze. The pair
    is the identity when the two axis sets are equal once negative axes are resolved with it. Axes come from the attribute (opset < 13) or a constant input.

    Does not fire when: an axis list is absent (Squeeze of every unit axis) or not a constant;
    the larger rank is unknown while an axis is negative; the sets differ; the middle
    tensor has another reader or is a graph output; the result is a graph output that `x`
    cannot be renamed to (a graph input, or a tensor with other readers).
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for outer in list(graph.nodes):
        if outer.op not in _INVERSE or not outer.inputs:
            continue
        inner = graph_queries.producer(outer.inputs[0])
        if inner is None or inner.op != _INVERSE[outer.op] or id(inner) not in local or not inner.inputs:
            continue
        middle = outer.inputs[0]
        if sole_reader(middle, ctx) is not outer:
            ctx.near_miss(RULE, outer, f"the {inner.op}'s output has other readers")
            continue
        larger = middle if inner.op == "Unsqueeze" else inner.inputs[0]
        rank = len(larger.shape) if larger.shape is not None else None
        first, second = axes_of(inner, rank), axes_of(outer, rank)
        if first is None or second is None or first != second:
            ctx.near_miss(RULE, outer, "the axes are implicit, not constants, or differ")
            continue
        source = inner.inputs[0]
        if not bypass(outer, source, ctx):
            ctx.near_miss(RULE, outer, "its result is a graph output that the input cannot be renamed to")
            continue
        inner.inputs.clear()
        inner.outputs.clear()
        rewritten += 1
    return rewritten


def axes_of(node: gs.Node, rank: int | None) -> set[int] | None:
    if "axes" in node.attrs:
        values = node.attrs["axes"]
    elif len(node.inputs) > 1 and node.inputs[1].name:
        values = graph_queries.constant_value(node.inputs[1])
    else:
        return None
    if values is None:
        return None
    axes = [int(a) for a in np.asarray(values).reshape(-1)]
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a % rank for a in axes]
    return set(axes) if len(set(axes)) == len(axes) else None
