"""Reshape∘Reshape collapsed into the outer Reshape."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["collapse_reshape_chains"]

RULE = "reshape_chain"
_RESHAPES = ("Reshape", "Flatten")


def collapse_reshape_chains(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Reshape(Reshape(x, s1), s2)` as `Reshape(x, s2)` (the inner one may be a Flatten).

    A Reshape's result depends only on its input's element order and the target shape, so the
    inner reshape can go — except that a 0 in `s2` copies a dimension of the *inner result*:
    such zeros are replaced by that dimension when the inner result's shape is known.

    Does not fire when: the inner result has another reader or is a graph output; `s2` is not
    a constant; `s2` holds a 0 with `allowzero=1`, or a 0 whose dimension is unknown.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for outer in list(graph.nodes):
        if outer.op != "Reshape" or len(outer.inputs) != 2:
            continue
        inner = graph_queries.producer(outer.inputs[0])
        if inner is None or inner.op not in _RESHAPES or id(inner) not in local:
            continue
        middle = outer.inputs[0]
        if sole_reader(middle, ctx) is not outer:
            ctx.near_miss(RULE, outer, f"the inner {inner.op}'s output has other readers")
            continue
        target = graph_queries.constant_value(outer.inputs[1])
        if target is None:
            ctx.near_miss(RULE, outer, "the target shape is not a constant")
            continue
        target = np.asarray(target).astype(np.int64).reshape(-1)
        if np.any(target == 0):
            if int(outer.attrs.get("allowzero", 0)) or middle.shape is None:
                ctx.near_miss(RULE, outer, "a 0 in the target shape refers to the inner result's unknown dims")
                continue
            copied = [middle.shape[i] if size == 0 else int(size) for i, size in enumerate(target)]
            if not all(isinstance(size, (int, np.integer)) and size >= 0 for size in copied):
                ctx.near_miss(RULE, outer, "a 0 in the target shape copies a dynamic dimension")
                continue
            outer.inputs[1] = ctx.constant(f"{outer.name}_shape", np.asarray(copied, dtype=np.int64))
        outer.inputs[0] = inner.inputs[0]
        inner.inputs.clear()
        inner.outputs.clear()
        rewritten += 1
    return rewritten
