"""Reshape, Cast, Slice, Expand, Concat and Split nodes that return their input unchanged, removed."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.fuse._affine import bypass
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["remove_noop_nodes"]

RULE = "noop_removal"


def remove_noop_nodes(graph: gs.Graph, ctx: FuseContext) -> int:
    """Removes a node whose single output is provably its data input, and points readers at the input.

    - Reshape / Expand: the input's and the output's shapes are both fully static and equal.
    - Cast: to the input's own element type; CastLike: to the type of an input of that type.
    - Slice: static shapes equal and every step 1 (a same-size, step-1 slice starts at 0).
    - Concat of a single input; Split into a single output.

    Decisions rest on the shapes the pass sees (inferred when the model was loaded).

    Does not fire when: a shape or dtype is unknown or dynamic; a Slice step is not a constant 1;
    the output is a graph output that the input cannot be renamed to (a graph input, or a
    tensor with other readers).
    """
    rewritten = 0
    for node in list(graph.nodes):
        if node.op not in _CHECKS or not node.inputs or len(node.outputs) != 1:
            continue
        if not _CHECKS[node.op](node):
            continue
        if bypass(node, node.inputs[0], ctx):
            rewritten += 1
        else:
            ctx.near_miss(RULE, node, "its output is a graph output that the input cannot be renamed to")
    return rewritten


def _same_static_shape(node: gs.Node) -> bool:
    before, after = node.inputs[0].shape, node.outputs[0].shape
    return tensor_shapes.is_static_shape(before) and tensor_shapes.is_static_shape(after) and list(before) == list(after)


def _cast_to_own_type(node: gs.Node) -> bool:
    source = node.inputs[0].dtype
    if source is None or "to" not in node.attrs:
        return False
    try:
        target = onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    except (KeyError, TypeError, ValueError):
        return False
    return np.dtype(source) == np.dtype(target)


def _whole_slice(node: gs.Node) -> bool:
    if not _same_static_shape(node):
        return False
    if "starts" in node.attrs:  # opset < 10: no steps
        return True
    if len(node.inputs) < 5 or not node.inputs[4].name:
        return True
    steps = graph_queries.constant_value(node.inputs[4])
    return steps is not None and bool(np.all(np.asarray(steps) == 1))


_CHECKS = {
    "Reshape": _same_static_shape,
    "Expand": _same_static_shape,
    "Cast": _cast_to_own_type,
    "CastLike": lambda node: len(node.inputs) == 2 and node.inputs[0].dtype is not None
    and node.inputs[1].dtype is not None and np.dtype(node.inputs[0].dtype) == np.dtype(node.inputs[1].dtype),
    "Slice": _whole_slice,
    "Concat": lambda node: len(node.inputs) == 1,
    "Split": lambda node: len(node.outputs) == 1,
}
