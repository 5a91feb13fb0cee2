"""Questions about a graphsurgeon graph, and the walks that answer them: bodies, reads, uses,
order, dead nodes, constant values.

graphsurgeon compares tensors *by name*, so a dict or set keyed by tensors silently merges a
subgraph's `x` with the outer `x`. Everything here keys by identity (`id()`) or by node.
Every walk is O(nodes + edges) over the levels it visits: graphsurgeon's own `toposort` and
`cleanup` spend seconds on a 100k-node graph; these replace them.
"""

from __future__ import annotations

from collections.abc import Iterator

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

__all__ = [
    "iter_graphs",
    "node_subgraphs",
    "iter_nodes",
    "all_reads",
    "toposort",
    "toposorted_nodes",
    "remove_dead_nodes",
    "remove_dead_nodes_in_level",
    "opset_version",
    "producer",
    "consumers",
    "graph_output_ids",
    "constant_value",
    "replace_all_uses",
    "to_networkx",
]


def iter_graphs(graph: gs.Graph, *, functions: bool = True) -> Iterator[gs.Graph]:
    """The graph, every nested If/Loop/Scan body (depth first) and, if asked, local functions."""
    yield graph
    for node in graph.nodes:
        if node.attrs:
            for subgraph in node_subgraphs(node):
                yield from iter_graphs(subgraph, functions=False)
    if functions:
        for function in getattr(graph, "functions", ()) or ():
            yield from iter_graphs(function, functions=False)


def node_subgraphs(node: gs.Node) -> list[gs.Graph]:
    """The bodies a node holds in its attributes (If/Loop/Scan, or any op with a graph attribute)."""
    found = []
    for attribute in node.attrs.values():
        # Type checks first and a list looked at by its first item: this runs for every
        # attribute of every node on each traversal, and almost none holds a graph.
        if isinstance(attribute, gs.Graph):
            found.append(attribute)
        elif isinstance(attribute, (list, tuple)) and attribute and isinstance(attribute[0], gs.Graph):
            found.extend(item for item in attribute if isinstance(item, gs.Graph))
    return found


def iter_nodes(graph: gs.Graph) -> Iterator[tuple[gs.Graph, gs.Node]]:
    """(owning graph, node) for every node, nested graphs and functions included."""
    for owner in iter_graphs(graph):
        for node in list(owner.nodes):
            yield owner, node


def all_reads(node: gs.Node) -> Iterator[gs.Tensor]:
    """The node's inputs and everything its If/Loop/Scan bodies read (outer values included).

    A body's outputs count as reads too: a body may return an outer value directly.
    """
    yield from node.inputs
    for subgraph in node_subgraphs(node) if node.attrs else ():
        for owner in iter_graphs(subgraph, functions=False):
            yield from owner.outputs
            for inner in owner.nodes:
                yield from inner.inputs


def _reads(node: gs.Node) -> list[gs.Tensor]:
    """`all_reads` as a list, without the generator for the common node that has no body."""
    if node.attrs and node_subgraphs(node):
        return list(all_reads(node))
    return list(node.inputs)


def toposort(graph: gs.Graph) -> None:
    """Sorts the nodes of every graph level (bodies and local functions too) topologically.

    O(nodes + edges) per level, where graphsurgeon's `toposort` spends seconds on a 100k-node
    graph computing hierarchy levels. Stable: an already sorted level keeps its order, and
    otherwise a node moves only behind what it reads. A node with bodies depends on every
    outer value its bodies read.
    """
    for owner in iter_graphs(graph):
        owner.nodes = toposorted_nodes(owner)


def toposorted_nodes(level: gs.Graph) -> list[gs.Node]:
    """One graph level's nodes in topological order (see `toposort`); the level is not modified."""
    nodes = level.nodes
    local = {id(node) for node in nodes}
    done: set[int] = set()
    ordered: list[gs.Node] = []
    for root in nodes:
        if id(root) in done:
            continue
        # Iterative depth-first post-order over producers: no recursion limit on long chains.
        stack = [(root, iter(_reads(root)))]
        done.add(id(root))
        while stack:
            node, reads = stack[-1]
            for tensor in reads:
                writers = tensor.inputs
                if writers:
                    writer = writers[0]
                    if id(writer) in local and id(writer) not in done:
                        done.add(id(writer))
                        stack.append((writer, iter(_reads(writer))))
                        break
            else:
                stack.pop()
                ordered.append(node)
    return ordered


def remove_dead_nodes(graph: gs.Graph) -> int:
    """Removes, at every graph level, the nodes no graph output depends on; returns how many.

    The linear-time counterpart of graphsurgeon's `cleanup(remove_unused_graph_inputs=False)`:
    a sweep back from each level's outputs through producers, innermost levels first (a dead
    node in a body no longer keeps an outer value alive). Removed nodes are unlinked from
    their tensors, so `consumers()` stops listing them. Graph inputs are kept, and a node
    that writes a graph input is dropped, as graphsurgeon does.
    """
    return sum(remove_dead_nodes_in_level(owner) for owner in reversed(list(iter_graphs(graph))))


def remove_dead_nodes_in_level(owner: gs.Graph) -> int:
    """`remove_dead_nodes` for one graph level only (its bodies' reads of it count as uses)."""
    for tensor in owner.inputs:
        tensor.inputs.clear()
    local = {id(node) for node in owner.nodes}
    live: set[int] = set()
    stack = list(owner.outputs)
    while stack:
        writers = stack.pop().inputs
        if not writers:
            continue
        writer = writers[0]
        if id(writer) not in local or id(writer) in live:
            continue
        live.add(id(writer))
        stack.extend(_reads(writer))
    if len(live) == len(owner.nodes):
        return 0
    removed = 0
    for node in owner.nodes:
        if id(node) not in live:
            node.inputs.clear()
            node.outputs.clear()
            removed += 1
    owner.nodes = [node for node in owner.nodes if id(node) in live]
    return removed


def opset_version(graph: gs.Graph, domain: str = "") -> int | None:
    """The version of `domain` the graph's model imports (the default domain: `graph.opset`)."""
    for entry in graph.import_domains or ():
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return entry.version
    return graph.opset if domain == "" else None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that writes `tensor`, or None for graph inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `tensor`, inside nested bodies too (by identity, deduplicated)."""
    seen: dict[int, gs.Node] = {}
    for node in tensor.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def graph_output_ids(graph: gs.Graph) -> set[int]:
    return {id(tensor) for tensor in graph.outputs}


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of `tensor` if it is known at compile time (an initializer or a Constant node)."""
    if isinstance(tensor, gs.Constant):
        return tensor.values
    node = producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        value = node.attrs["value"]
        return value.values if isinstance(value, gs.Constant) else None
    return None


def replace_all_uses(old: gs.Tensor, new: gs.Tensor) -> int:
    """Points every node that reads `old` at `new`, nested bodies included; returns inputs moved.

    graphsurgeon links a body's read of an outer tensor to the very same object, so `old.outputs`
    already lists readers inside If/Loop/Scan bodies: the rewrite costs O(uses), not a graph scan.
    Graph outputs are left alone: which tensor a graph returns is the caller's decision.
    """
    moved = 0
    for node in consumers(old):
        for index, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[index] = new
                moved += 1
    return moved


def to_networkx(graph: gs.Graph) -> nx.MultiDiGraph:
    """A dependency view of one graph level: a vertex per node (keyed by `id`), an edge per tensor.

    Vertices carry the node as `node`; edges carry the tensor as `tensor`. A nested body is
    part of its If/Loop/Scan node; outer tensors read inside a body count as its node's inputs.
    """
    view = nx.MultiDiGraph()
    for node in graph.nodes:
        view.add_node(id(node), node=node)
    for node in graph.nodes:
        for tensor in all_reads(node):
            source = producer(tensor)
            if source is not None and view.has_node(id(source)):
                view.add_edge(id(source), id(node), tensor=tensor)
    return view
