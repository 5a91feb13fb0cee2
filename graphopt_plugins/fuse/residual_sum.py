"""A residual Add feeding a LayerNormalization becomes Sum, which onnxruntime leaves unfused."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["keep_residual_norm_unfused"]

RULE = "residual_sum"


def keep_residual_norm_unfused(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `LayerNormalization(Add(a, b))` as `LayerNormalization(Sum(a, b))` when a and b are both computed.

    Why: onnxruntime (1.32, CPU) fuses every such Add and LayerNormalization into its contrib
    SkipLayerNormalization when it loads the model, and that kernel is 4.5–7× slower than the
    two ops it replaces: at 1 thread on the benchmark machine, 151 µs against 34 µs for
    (1, 64, 384), 2.3 ms against 0.34 ms for (1, 512, 768). Its fusion matches Add only. Sum of
    two inputs computes the same values with the same broadcasting on every runtime, so the
    rewrite is exact and standard. An Add with a constant operand (a bias) is left alone.
    """
    rewritten = 0
    for norm in list(graph.nodes):
        if norm.op != "LayerNormalization" or norm.domain not in (None, "", "ai.onnx"):
            continue
        add = graph_queries.producer(norm.inputs[0])
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            continue
        if any(graph_queries.constant_value(operand) is not None for operand in add.inputs):
            ctx.near_miss(RULE, add, "an operand is a constant: a bias, not a residual")
            continue
        add.op = "Sum"
        rewritten += 1
    return rewritten
