"""The `cleanup` pass: run the lossless clean-up steps to a fix point."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import onnx
import onnx_graphsurgeon as gs

import graphopt
from graphopt import convert, graph_queries, tensor_shapes
from graphopt.proto_walk import iter_graph_protos
from graphopt_plugins.cleanup.cse import eliminate_common_subexpressions
from graphopt_plugins.cleanup.dedupe import dedupe_initializers
from graphopt_plugins.cleanup.folding import decides_by_unknown_shapes, fold_constants
from graphopt_plugins.cleanup.passthrough import remove_passthrough_nodes

__all__ = ["Cleanup"]

_MAX_ROUNDS = 8


class Cleanup(graphopt.Pass):
    """Removes dead nodes, unused initializers, Identity/Dropout; folds constants; dedupes; CSE.

    Rewrites, in every graph level (If/Loop/Scan bodies and local functions included):
    - nodes that no graph output depends on, and initializers nothing reads;
    - Identity, and Dropout in inference mode (mask unread);
    - constant subgraphs, folded to initializers, unless a folded value would grow the model
      by more than `fold_growth_limit` bytes (Tile/Expand/ConstantOfShape stay nodes then);
    - initializers with equal values, merged; nodes computing the same thing, merged.
    Never folds random ops (RandomNormal/Uniform[Like], Bernoulli, Multinomial) or nodes with
    bodies. Refuses nothing; never touches graph input or output names. Lossless: outputs equal
    to the per-dtype tolerance (folding gives the runtime's own bits: numpy only for the cheap
    ops where it agrees with onnxruntime exactly, onnxruntime with optimizations off for the rest).
    """

    name = "cleanup"
    lossless = True

    @dataclasses.dataclass
    class Options:
        fold_constants: bool = True  # fold constant subgraphs into initializers
        fold_growth_limit: int = 1 << 20  # bytes a folded constant may add to the model
        remove_passthrough: bool = True  # drop Identity and inference-mode Dropout
        dedupe_initializers: bool = True  # merge initializers with equal values
        cse: bool = True  # merge nodes that compute the same thing

        def __post_init__(self):
            # Checked when options are parsed, so a bad value fails before any work is done.
            if self.fold_growth_limit < 0:
                raise ValueError("fold_growth_limit must be >= 0")

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        options = self.options
        source = ctx.proto(build=False)  # an exported graph has none: only the proto it was imported from can
        stats = {"unused_initializers": _unused_initializers(source) if source is not None else 0}
        # Each step counts only its own rewrites: nodes a step disconnected are dropped uncounted,
        # and dead nodes go before folding, whose own cleanup would count them.
        steps = [
            ("passthrough_removed", remove_passthrough_nodes if options.remove_passthrough else None),
            ("dead_nodes_removed", _remove_dead_nodes),
            ("constants_folded", (lambda g: fold_constants(g, options.fold_growth_limit)) if options.fold_constants else None),
            ("initializers_deduped", dedupe_initializers if options.dedupe_initializers else None),
            ("subexpressions_merged", eliminate_common_subexpressions if options.cse else None),
        ]
        for key, _ in steps:
            stats[key] = 0
        steps = [(key, step) for key, step in steps if step is not None]
        # Every step rewrites all it can in one call, so it needs running again only once another
        # has changed the graph since: the fix point is reached when none has anything to do.
        # Skipping the confirming reruns saves a fifth to a quarter of cleanup's time on PP-OCR.
        version, ran_at = 0, {}
        # Quiet: graphsurgeon warns on the terminal whenever a step reads a bfloat16 constant's values.
        with convert.collector_paused(), convert.quiet_graphsurgeon(), _distinct_node_names(graph):
            for round_index in range(_MAX_ROUNDS):
                # What the last round created has no shapes yet; new shapes let more fold. A
                # refresh that learned nothing left the graph as it was: nothing to run again for it.
                if round_index and options.fold_constants and decides_by_unknown_shapes(graph) \
                        and tensor_shapes.refresh_shapes(graph):
                    version += 1
                changed = False
                for key, step in steps:
                    if ran_at.get(key) == version:
                        continue
                    count = step(graph)
                    if count:
                        stats[key] += count
                        version += 1
                        changed = True
                        _drop_disconnected_nodes(graph)
                    ran_at[key] = version
                if not changed:
                    break
        graph_queries.toposort(graph)  # linear; graphsurgeon's toposort took seconds at 100k nodes
        ctx.logger.info("cleanup: %s", stats)
        return graphopt.PassResult(changed=any(stats.values()), stats=stats)


@contextlib.contextmanager
def _distinct_node_names(graph: gs.Graph) -> Iterator[None]:
    """Names unnamed nodes for the duration, then unnames them again.

    graphsurgeon unlinks a node from a tensor with `list.remove`, which finds the first node
    *equal* to it, and two nodes are equal when name, op, attributes and tensors are. Two
    unnamed `Add(c, c)` then unlink each other's entries in `c.outputs`, and removing the second
    raises "list.remove(x): x not in list". A distinct name makes equal mean identical.
    """
    taken = {node.name for _, node in graph_queries.iter_nodes(graph)}
    renamed = []
    for _, node in graph_queries.iter_nodes(graph):
        if not node.name:
            node.name = _fresh_name(taken)
            renamed.append(node)
    try:
        yield
    finally:
        for node in renamed:
            node.name = ""


def _fresh_name(taken: set[str]) -> str:
    index = len(taken)
    while f"_cleanup_node_{index}" in taken:
        index += 1
    name = f"_cleanup_node_{index}"
    taken.add(name)
    return name


def _drop_disconnected_nodes(graph: gs.Graph) -> None:
    """Removes nodes a rewrite left with no inputs and no outputs (that rewrite counted them)."""
    for owner in graph_queries.iter_graphs(graph):
        owner.nodes = [node for node in owner.nodes if node.inputs or node.outputs]


def _remove_dead_nodes(graph: gs.Graph) -> int:
    return graph_queries.remove_dead_nodes(graph)


def _unused_initializers(model: onnx.ModelProto) -> int:
    """Initializers that nothing reads, in the main graph and every body; export drops them."""
    inputs = {value.name for value in model.graph.input}
    return sum(_unused_in(graph, inputs if graph is model.graph else set()) for graph in iter_graph_protos(model.graph))


def _unused_in(graph: onnx.GraphProto, graph_inputs: set[str]) -> int:
    # A body may read its outer graphs' names, so what a graph reads includes its bodies' reads.
    read: set[str] = set()
    for owner in iter_graph_protos(graph):
        read.update(output.name for output in owner.output)
        for node in owner.node:
            read.update(node.input)
    return sum(1 for t in graph.initializer if t.name not in read and t.name not in graph_inputs)
