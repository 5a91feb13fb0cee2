"""Constant folding with a cap on how much a folded constant may grow the model.

Folding itself is onnx-graphsurgeon's (`Graph.fold_constants`, evaluated in onnxruntime); what
is ours is the refusal: a node whose folded output would be more than `growth_limit` bytes
larger than the constants it consumes stays a node. Folding `Tile`, `Expand` or
`ConstantOfShape` into megabytes of repeated values is how other tools bloat models.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime

from graphopt import ir

__all__ = ["fold_constants"]

logger = logging.getLogger(__name__)

# Never folded: their value is not a function of their inputs.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def fold_constants(graph: gs.Graph, growth_limit: int) -> int:
    """Folds every constant-foldable node of `graph` (bodies and functions too); returns nodes folded."""
    before = _node_count(graph)
    # graphsurgeon evaluates in sessions of its own, whose warnings would reach the terminal.
    onnxruntime.set_default_logger_severity(3)
    graph.toposort()
    with ir.quiet_graphsurgeon():
        graph.fold_constants(
            fold_shapes=True,
            recurse_subgraphs=True,
            error_ok=True,
            flatten_subgraphs=False,
            should_exclude_node=lambda node: _should_not_fold(node, growth_limit),
            recurse_functions=True,
        )
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True, recurse_functions=True)
    return max(before - _node_count(graph), 0)


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
