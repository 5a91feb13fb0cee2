"""Flatten → Softmax → Reshape(Shape(x)) (the opset < 13 way of a last-axis softmax) → one Softmax of x."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.fuse._pattern import drop, emit, sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_flattened_softmax"]

RULE = "flattened_softmax"


def fuse_flattened_softmax(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Reshape(Softmax(Flatten<axis=r-1>(x)), Shape(x))` as `Softmax(x)` over its last axis.

    paddle2onnx and older exporters write a softmax over the last axis of a rank-r tensor this
    way. Exact at every opset: before 13 Softmax<axis=r-1> coerces x to the same 2-D matrix,
    from 13 on Softmax<axis=-1> is per row. Must not fire when the Flatten axis is not the
    last one, the Softmax is over another axis of the 2-D matrix, the Reshape target is neither
    `Shape(x)` of the very same x nor a constant equal to x's static shape (what the
    `reshape_own_dims` rule makes of `Shape(x)`), or an intermediate has other readers or is a
    graph output.
    """
    rewritten = 0
    for flatten in list(graph.nodes):
        if flatten.op != "Flatten" or not flatten.outputs:
            continue
        x = flatten.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        axis = int(flatten.attrs.get("axis", 1))
        if rank is None or axis not in (rank - 1, -1) or rank < 2:
            continue
        softmax = sole_reader(flatten.outputs[0], ctx)
        if softmax is None or softmax.op != "Softmax" or int(softmax.attrs.get("axis", 1 if ctx.opset < 13 else -1)) not in (1, -1):
            ctx.near_miss(RULE, flatten, "the flattened rows are not read by one Softmax over the columns")
            continue
        reshape = sole_reader(softmax.outputs[0], ctx)
        if reshape is None or reshape.op != "Reshape" or not _restores_shape_of(x, reshape.inputs[1]):
            ctx.near_miss(RULE, flatten, "the Softmax result is not reshaped back to x's shape")
            continue
        emit(ctx, "Softmax", [x], reshape.outputs[0], {"axis": -1 if ctx.opset >= 13 else rank - 1})
        drop([flatten, softmax, reshape])
        rewritten += 1
    return rewritten


def _restores_shape_of(x: gs.Tensor, target: gs.Tensor) -> bool:
    shape = graph_queries.producer(target)
    if shape is not None and shape.op == "Shape":
        return shape.inputs[0] is x and shape.attrs.get("start", 0) == 0 and shape.attrs.get("end") is None
    value = graph_queries.constant_value(target)
    return value is not None and tensor_shapes.is_static_shape(x.shape) and [int(v) for v in value.ravel()] == [int(d) for d in x.shape]
