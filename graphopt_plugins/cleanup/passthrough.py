"""Removal of nodes that pass their input through: Identity, and Dropout in inference mode."""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from graphopt import graph_queries

__all__ = ["remove_passthrough_nodes"]

logger = logging.getLogger(__name__)


def remove_passthrough_nodes(graph: gs.Graph) -> int:
    """Bypasses Identity and inference-mode Dropout nodes in `graph` and its bodies; returns how many.

    Does not fire on: a Dropout in training mode (a `training_mode` input that is not a constant
    false), a Dropout whose mask output is read or is a graph output, and an Identity that copies
    a graph input (or an outer value) straight to a graph output, where the node is what makes the
    output exist.
    """
    removed = 0
    for owner in graph_queries.iter_graphs(graph):
        # Looked up per node, so kept as id sets: a scan of the lists per node is quadratic.
        outputs = graph_queries.graph_output_ids(owner)
        local_nodes = {id(node) for node in owner.nodes}
        for node in list(owner.nodes):
            if _is_passthrough(node, outputs) and _bypass(node, outputs, local_nodes):
                removed += 1
    return removed


def _is_passthrough(node: gs.Node, outputs: set[int]) -> bool:
    if node.op == "Identity" and len(node.inputs) == 1 and len(node.outputs) == 1:
        return True
    if node.op != "Dropout" or not node.inputs:
        return False
    if len(node.outputs) > 1 and (graph_queries.consumers(node.outputs[1]) or id(node.outputs[1]) in outputs):
        logger.debug("Dropout %s kept: its mask is read or is a graph output", node.name)
        return False
    if len(node.inputs) >= 3 and node.inputs[2].name:
        training = graph_queries.constant_value(node.inputs[2])
        if training is None or bool(training):
            logger.debug("Dropout %s kept: training_mode is not a constant false", node.name)
            return False
    return True


def _bypass(node: gs.Node, outputs: set[int], local_nodes: set[int]) -> bool:
    source, result = node.inputs[0], node.outputs[0]
    if id(result) not in outputs:
        node.inputs.clear()
        node.outputs.clear()
        graph_queries.replace_all_uses(result, source)
        return True
    # The result is a graph output, whose name must stay: let the source's producer write it.
    writer = graph_queries.producer(source)
    if writer is None or id(writer) not in local_nodes or id(source) in outputs:
        logger.debug("%s %s kept: it names a graph output after a value it cannot rename", node.op, node.name)
        return False
    node.inputs.clear()
    node.outputs.clear()
    graph_queries.replace_all_uses(source, result)
    slot = next(i for i, tensor in enumerate(writer.outputs) if tensor is source)
    writer.outputs[slot] = result
    return True
