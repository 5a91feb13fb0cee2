"""Common-subexpression elimination: one node where several compute the same thing."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.cleanup.dedupe import fingerprint

__all__ = ["eliminate_common_subexpressions"]

logger = logging.getLogger(__name__)

# Nodes that must not be merged even with equal inputs: their outputs differ run to run.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}


def eliminate_common_subexpressions(graph: gs.Graph) -> int:
    """Merges nodes with the same op, domain, attributes and input tensors; returns nodes merged.

    Walks each graph level in topological order, so whole duplicated chains collapse in one
    sweep. Does not merge: nondeterministic ops, nodes with If/Loop/Scan bodies, and a node
    whose output is a graph output (its name is the interface).
    """
    merged = 0
    for owner in graph_queries.iter_graphs(graph):
        owner.nodes = graph_queries.toposorted_nodes(owner)
        outputs = graph_queries.graph_output_ids(owner)
        seen: dict[tuple, gs.Node] = {}
        for node in list(owner.nodes):
            key = _signature(node)
            if key is None:
                continue
            first = seen.setdefault(key, node)
            if first is node or len(first.outputs) != len(node.outputs):
                continue
            if any(id(tensor) in outputs for tensor in node.outputs):
                logger.debug("CSE: %s duplicates %s but writes a graph output", node.name, first.name)
                continue
            for duplicate, kept in zip(list(node.outputs), list(first.outputs)):
                graph_queries.replace_all_uses(duplicate, kept)
            node.inputs.clear()
            node.outputs.clear()
            merged += 1
    return merged


def _signature(node: gs.Node) -> tuple | None:
    if node.op in _NONDETERMINISTIC or not node.outputs:
        return None
    attributes = []
    for name in sorted(node.attrs):
        value = _hashable(node.attrs[name])
        if value is None:
            return None
        attributes.append((name, value))
    return (node.op, node.domain or "", tuple(attributes), tuple(id(tensor) if tensor.name else "" for tensor in node.inputs), len(node.outputs))


def _hashable(value):
    if isinstance(value, gs.Graph):
        return None
    if isinstance(value, gs.Constant):
        return _array_key(value.values)
    if isinstance(value, np.ndarray):
        return _array_key(value)
    if isinstance(value, (list, tuple)):
        items = tuple(_hashable(item) for item in value)
        return None if any(item is None for item in items) else items
    if isinstance(value, (str, int, float, bool, bytes)) or value is None:
        return ("scalar", type(value).__name__, value)
    if isinstance(value, gs.Tensor):  # a reference attribute or a typed placeholder
        return ("tensor", value.name, str(value.dtype))
    return ("repr", repr(value))


def _array_key(values: np.ndarray) -> tuple:
    return ("array", *fingerprint(values))
