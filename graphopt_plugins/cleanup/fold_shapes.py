"""`Shape` folded from inferred shapes: the dims a tensor has whatever the inputs.

Ours, not graphsurgeon's `fold_shapes`: that option ignores `Shape`'s `start`/`end` attributes
(opset 15), so `Shape<start=1>(x)` became the whole shape, and it turns on a "cast elision" that
rewrites `Cast(int->float) -> Mul(0.5) -> Cast(->int)` into an integer `Mul` by the constant
cast to 0. Neither is lossless.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries

__all__ = ["fold_static_shapes", "make_constant"]


def fold_static_shapes(graph: gs.Graph) -> int:
    """Turns `Shape(x)` into a constant where the dims it returns are static, and
    `Gather(Shape(x), constant indices)` where the gathered dims are, at every graph level.

    Honours `start`/`end`. The Shape node is left without outputs for cleanup to remove.
    Returns how many tensors became constants.
    """
    folded = 0
    for owner in graph_queries.iter_graphs(graph):
        for node in list(owner.nodes):
            if node.op != "Shape" or len(node.inputs) != 1 or len(node.outputs) != 1:
                continue
            dims = _shape_dims(node)
            if dims is None:
                continue
            shape = node.outputs[0]
            for reader in graph_queries.consumers(shape):
                folded += _fold_shape_gather(reader, shape, dims)
            if all(d is not None for d in dims):
                make_constant(shape, np.array(dims, dtype=np.int64))
                folded += 1
    return folded


def _shape_dims(node: gs.Node) -> list[int | None] | None:
    """The dims `node` (a Shape) returns, None where not static; None if the rank is unknown."""
    shape = node.inputs[0].shape
    if shape is None:
        return None
    rank = len(shape)
    bounds = []
    for name, default in (("start", 0), ("end", rank)):
        value = node.attrs.get(name, default)
        if not isinstance(value, (int, np.integer)):  # an attribute reference inside a function
            return None
        value = int(value) + rank if value < 0 else int(value)
        bounds.append(min(max(value, 0), rank))
    return [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape[bounds[0]:bounds[1]]]


def _fold_shape_gather(reader: gs.Node, shape: gs.Tensor, dims: list[int | None]) -> int:
    """Makes `Gather(shape, constant indices)` a constant when the gathered dims are static; 1 if it did."""
    if reader.op != "Gather" or len(reader.inputs) != 2 or reader.inputs[0] is not shape or len(reader.outputs) != 1:
        return 0
    if int(reader.attrs.get("axis", 0)) not in (0, -1):
        return 0
    indices = graph_queries.constant_value(reader.inputs[1])
    if indices is None or indices.dtype.kind not in "iu":
        return 0
    flat = [int(i) + len(dims) if i < 0 else int(i) for i in indices.ravel()]
    if any(i < 0 or i >= len(dims) or dims[i] is None for i in flat):
        return 0
    make_constant(reader.outputs[0], np.array([dims[i] for i in flat], dtype=np.int64).reshape(indices.shape))
    return 1


def make_constant(tensor: gs.Tensor, value: np.ndarray) -> None:
    """Turns `tensor` into a constant holding `value`."""
    # In place, as graphsurgeon does: readers and graph outputs keep pointing at the tensor.
    tensor.inputs.clear()
    tensor.to_constant(value)
