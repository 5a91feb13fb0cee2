"""Constant folding with a cap on how much a folded constant may grow the model.

Folding itself is onnx-graphsurgeon's (`Graph.fold_constants`, evaluated in onnxruntime); what
is ours is the refusal: a node whose folded output would be more than `growth_limit` bytes
larger than the constants it consumes stays a node. Folding `Tile`, `Expand` or
`ConstantOfShape` into megabytes of repeated values is how other tools bloat models.

Shapes are folded here too, not by graphsurgeon's `fold_shapes`: that option ignores `Shape`'s
`start`/`end` attributes (opset 15), so `Shape<start=1>(x)` became the whole shape, and it turns
on a "cast elision" that rewrites `Cast(int->float) -> Mul(0.5) -> Cast(->int)` into an integer
`Mul` by the constant cast to 0. Neither is lossless.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime

from graphopt import ir

__all__ = ["fold_constants", "decides_by_unknown_shapes"]

logger = logging.getLogger(__name__)

# Never folded: their value is not a function of their inputs.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def fold_constants(graph: gs.Graph, growth_limit: int) -> int:
    """Folds every constant-foldable node of `graph` (bodies and functions too); returns nodes folded."""
    before = _node_count(graph)
    # graphsurgeon evaluates in sessions of its own, whose warnings would reach the terminal.
    onnxruntime.set_default_logger_severity(4)
    ir.toposort(graph)
    shapes_folded = _fold_static_shapes(graph)
    # graphsurgeon's fold copies the graph and builds a session even when nothing folds; the
    # fix-point loop's confirming round would pay that for nothing.
    foldable = _has_foldable_node(graph, growth_limit)
    if not foldable and not shapes_folded:
        return 0
    with ir.quiet_graphsurgeon():
        if foldable:
            graph.fold_constants(
                fold_shapes=False,  # see the module docstring; _fold_static_shapes does it instead
                recurse_subgraphs=True,
                error_ok=True,
                flatten_subgraphs=False,
                should_exclude_node=lambda node: _should_not_fold(node, growth_limit),
                recurse_functions=True,
            )
    ir.remove_dead_nodes(graph)
    return max(before - _node_count(graph), 0)


def decides_by_unknown_shapes(graph: gs.Graph) -> bool:
    """Whether a folding decision waits on a shape not yet inferred (a `Shape` of a tensor
    whose shape is missing or has an unnamed unknown dim, or a constant-input node whose output
    size is unknown). A named dynamic dim (`batch`) stays unknown however often one infers."""
    for _, node in ir.iter_nodes(graph):
        if node.op == "Shape" and node.inputs and _not_yet_inferred(node.inputs[0].shape):
            return True
        if node.inputs and all(isinstance(t, gs.Constant) or not t.name for t in node.inputs) and _output_bytes(node) is None:
            return True
    return False


def _not_yet_inferred(shape) -> bool:
    return shape is None or any(d is None for d in shape)


def _has_foldable_node(graph: gs.Graph, growth_limit: int) -> bool:
    """Whether any node, at any level, reads only constants and may be folded."""
    for _, node in ir.iter_nodes(graph):
        if any(isinstance(value, gs.Graph) for value in node.attrs.values()):
            continue  # not folded: flatten_subgraphs is off
        if all(isinstance(tensor, gs.Constant) or not tensor.name for tensor in node.inputs):
            if not _should_not_fold(node, growth_limit):
                return True
    return False


def _fold_static_shapes(graph: gs.Graph) -> int:
    """Turns `Shape(x)` into a constant where the dims it returns are static, and
    `Gather(Shape(x), constant indices)` where the gathered dims are, at every graph level.

    Honours `start`/`end`. The Shape node is left without outputs for cleanup to remove.
    Returns how many tensors became constants.
    """
    folded = 0
    for owner in ir.iter_graphs(graph):
        for node in list(owner.nodes):
            if node.op != "Shape" or len(node.inputs) != 1 or len(node.outputs) != 1:
                continue
            dims = _shape_dims(node)
            if dims is None:
                continue
            shape = node.outputs[0]
            for reader in ir.consumers(shape):
                folded += _fold_shape_gather(reader, shape, dims)
            if all(d is not None for d in dims):
                _make_constant(shape, np.array(dims, dtype=np.int64))
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
    indices = ir.constant_value(reader.inputs[1])
    if indices is None or indices.dtype.kind not in "iu":
        return 0
    flat = [int(i) + len(dims) if i < 0 else int(i) for i in indices.ravel()]
    if any(i < 0 or i >= len(dims) or dims[i] is None for i in flat):
        return 0
    _make_constant(reader.outputs[0], np.array([dims[i] for i in flat], dtype=np.int64).reshape(indices.shape))
    return 1


def _make_constant(tensor: gs.Tensor, value: np.ndarray) -> None:
    # In place, as graphsurgeon does: readers and graph outputs keep pointing at the tensor.
    tensor.inputs.clear()
    tensor.to_constant(value)


def _should_not_fold(node: gs.Node, growth_limit: int) -> bool:
    if node.op in _NONDETERMINISTIC:
        return True
    grown = _output_bytes(node)
    if grown is None:
        logger.debug("not folding %s (%s): its output size is unknown", node.name, node.op)
        return True
    consumed = sum(tensor.values.nbytes for tensor in node.inputs if isinstance(tensor, gs.Constant))
    if grown - consumed > growth_limit:
        logger.debug("not folding %s (%s): it would grow the model by %d bytes", node.name, node.op, grown - consumed)
        return True
    return False


def _output_bytes(node: gs.Node) -> int | None:
    total = 0
    for tensor in node.outputs:
        count = _known_count(tensor) if tensor.shape is not None else None
        if count is None:
            count = _count_from_constant_inputs(node)
        if count is None:
            return None
        itemsize = np.dtype(tensor.dtype).itemsize if _has_numpy_dtype(tensor) else 8
        total += count * itemsize
    return total


def _known_count(tensor: gs.Tensor) -> int | None:
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in tensor.shape):
        return None
    return math.prod(int(d) for d in tensor.shape)


def _count_from_constant_inputs(node: gs.Node) -> int | None:
    """Output element count of the growth-prone ops, computed from their constant inputs."""
    values = [ir.constant_value(tensor) for tensor in node.inputs]
    try:
        if node.op == "ConstantOfShape" and values and values[0] is not None:
            return math.prod(int(d) for d in values[0].ravel())
        if node.op == "Expand" and len(values) == 2 and None not in values:
            return math.prod(np.broadcast_shapes(values[0].shape, tuple(int(d) for d in values[1].ravel())))
        if node.op == "Tile" and len(values) == 2 and None not in values:
            return values[0].size * math.prod(int(d) for d in values[1].ravel())
        if node.op == "Range" and len(values) == 3 and None not in values:
            start, limit, delta = (float(v) for v in values)
            return max(math.ceil((limit - start) / delta), 0)
    except (ValueError, ZeroDivisionError, TypeError):
        return None
    if node.op in ("ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot", "EyeLike"):
        return None
    # Other ops do not grow much past their largest input (elementwise, reshapes, transposes);
    # their inputs may not be constant yet while graphsurgeon plans a folded chain.
    return max((v.size for v in values if v is not None), default=0)


def _has_numpy_dtype(tensor: gs.Tensor) -> bool:
    try:
        np.dtype(tensor.dtype)
        return tensor.dtype is not None
    except TypeError:
        return False


def _node_count(graph: gs.Graph) -> int:
    return sum(len(owner.nodes) for owner in ir.iter_graphs(graph))
