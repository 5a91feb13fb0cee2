"""A 2-D Transpose feeding Gemm's A or B folded into `transA` / `transB`."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fold_transpose_into_gemm"]

RULE = "transpose_into_gemm"


def fold_transpose_into_gemm(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Gemm(Transpose(A), B)` as `Gemm(A, B, transA=1-transA)`, and likewise for B.

    The Transpose must swap the two axes of a 2-D tensor (`perm=[1,0]`, or no `perm` on a
    tensor known to be 2-D).

    Does not fire when: the Transpose's output has another reader or is a graph output (it
    would stay, and nothing is saved); its rank is unknown; it is Gemm's C input.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for gemm in list(graph.nodes):
        if gemm.op != "Gemm":
            continue
        for index, flag in ((0, "transA"), (1, "transB")):
            if len(gemm.inputs) <= index:
                continue
            transpose = graph_queries.producer(gemm.inputs[index])
            if transpose is None or transpose.op != "Transpose" or id(transpose) not in local:
                continue
            if sole_reader(gemm.inputs[index], ctx) is not gemm or sum(t is gemm.inputs[index] for t in gemm.inputs) != 1:
                ctx.near_miss(RULE, gemm, "the Transpose's output has other readers")
                continue
            perm = transpose.attrs.get("perm")
            shape = transpose.inputs[0].shape
            if not (list(perm or []) == [1, 0] or (perm is None and shape is not None and len(shape) == 2)):
                ctx.near_miss(RULE, gemm, "the Transpose is not a known 2-D swap")
                continue
            gemm.attrs[flag] = 1 - int(gemm.attrs.get(flag, 0))
            gemm.inputs[index] = transpose.inputs[0]
            transpose.inputs.clear()
            transpose.outputs.clear()
            rewritten += 1
    return rewritten
