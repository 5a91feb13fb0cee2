"""Where a model can be cut: positions in its topological node order, and what crosses each.

Only top-level nodes are placed; an If/Loop/Scan node travels with its bodies, and the
outer-scope tensors a body reads count as inputs of the node that owns it, so no cut ever
separates a body from a tensor it needs. In a topological order every tensor flows forward,
so every position between two nodes is a valid cut: the tensors crossing it are those made
before it (or fed to the model) and still needed after it (or asked for as model outputs).
A tensor made early and read late crosses every cut in between: it is carried through the
intermediate stages as a pass-through input and output.
"""

from __future__ import annotations

import dataclasses

import onnx

__all__ = ["NodeIO", "CutPlan", "node_io", "weights_read", "crossing_sets"]


@dataclasses.dataclass(frozen=True)
class NodeIO:
    """A top-level node's tensor reads (its subgraphs' outer-scope reads included) and writes."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CutPlan:
    """The model's activations by position: `crossing[p]` crosses the cut before node p."""

    order: tuple[NodeIO, ...]
    model_inputs: tuple[str, ...]
    model_outputs: tuple[str, ...]
    crossing: tuple[tuple[str, ...], ...]  # len(order) + 1 entries; [0] = inputs, [-1] = outputs


def node_io(model: onnx.ModelProto) -> list[NodeIO]:
    """Reads and writes of each top-level node, in the model's (topological) order."""
    constants = _initializer_names(model.graph)
    return [
        NodeIO(tuple(name for name in _all_reads(node) if name not in constants), tuple(name for name in node.output if name))
        for node in model.graph.node
    ]


def weights_read(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """The initializers each top-level node reads, its bodies' reads of outer weights included."""
    constants = _initializer_names(model.graph)
    return [tuple(name for name in _all_reads(node) if name in constants) for node in model.graph.node]


def _all_reads(node: onnx.NodeProto) -> tuple[str, ...]:
    reads = [name for name in node.input if name]
    for graph in _subgraphs(node):
        reads.extend(sorted(_outer_reads(graph)))
    return tuple(dict.fromkeys(reads))


def crossing_sets(model: onnx.ModelProto) -> CutPlan:
    """The tensors (not weights) that cross each cut position, in a stable order."""
    order = node_io(model)
    constants = _initializer_names(model.graph)
    inputs = tuple(value.name for value in model.graph.input if value.name not in constants)
    outputs = tuple(value.name for value in model.graph.output)
    last_use: dict[str, int] = {}
    for position, io in enumerate(order):
        for name in io.reads:
            last_use[name] = position
    for name in outputs:
        last_use[name] = len(order)  # needed at the very end
    made_at = {name: -1 for name in inputs}
    for position, io in enumerate(order):
        for name in io.writes:
            made_at[name] = position
    crossing = []
    for cut in range(len(order) + 1):
        # Alive across the cut: made before it (inputs at -1), last needed at or after it.
        alive = [name for name, made in made_at.items() if made < cut and last_use.get(name, -2) >= cut]
        crossing.append(tuple(alive))
    return CutPlan(tuple(order), inputs, outputs, tuple(crossing))


def _initializer_names(graph: onnx.GraphProto) -> set[str]:
    return {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}


def _subgraphs(node: onnx.NodeProto):
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a body reads that it (or its own nested bodies) does not define."""
    defined = {value.name for value in graph.input} | _initializer_names(graph)
    reads: set[str] = set()
    for node in graph.node:
        reads.update(name for name in node.input if name)
        for nested in _subgraphs(node):
            reads |= _outer_reads(nested)
        defined.update(node.output)
    reads.update(value.name for value in graph.output)
    return reads - defined
