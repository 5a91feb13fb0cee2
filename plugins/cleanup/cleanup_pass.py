"""The `cleanup` pass: run the lossless clean-up steps to a fix point."""

from __future__ import annotations

import dataclasses

import onnx
import onnx_graphsurgeon as gs

import graphopt
from graphopt import ir
from graphopt_plugins.cleanup.cse import eliminate_common_subexpressions
from graphopt_plugins.cleanup.dedupe import dedupe_initializers
from graphopt_plugins.cleanup.folding import fold_constants
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
    Refuses nothing; never touches graph input or output names. Lossless: outputs equal to
    the per-dtype tolerance (folding evaluates in onnxruntime, so results are bit-identical
    to what the runtime would compute).
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

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        options = self.options
        if options.fold_growth_limit < 0:
            raise graphopt.UsageError("option cleanup.fold_growth_limit must be >= 0")
        stats = {"unused_initializers": _unused_initializers(ctx.model) if ctx.model is not None else 0}
        for _ in range(_MAX_ROUNDS):
            round_stats = {
                "passthrough_removed": remove_passthrough_nodes(graph) if options.remove_passthrough else 0,
                "constants_folded": fold_constants(graph, options.fold_growth_limit) if options.fold_constants else 0,
                "initializers_deduped": dedupe_initializers(graph) if options.dedupe_initializers else 0,
                "subexpressions_merged": eliminate_common_subexpressions(graph) if options.cse else 0,
                "dead_nodes_removed": _remove_dead_nodes(graph),
            }
            for key, count in round_stats.items():
                stats[key] = stats.get(key, 0) + count
            if not any(round_stats.values()):
                break
        graph.toposort()
        ctx.logger.info("cleanup: %s", stats)
        return graphopt.PassResult(changed=any(stats.values()), stats=stats)


def _remove_dead_nodes(graph: gs.Graph) -> int:
    before = sum(len(owner.nodes) for owner in ir.iter_graphs(graph))
    with ir.quiet_graphsurgeon():
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True, recurse_functions=False)
    return before - sum(len(owner.nodes) for owner in ir.iter_graphs(graph))


def _unused_initializers(model: onnx.ModelProto) -> int:
    """Initializers no node (at any depth) and no graph output reads; export drops them."""
    read: set[str] = set()

    def collect(graph: onnx.GraphProto) -> None:
        read.update(output.name for output in graph.output)
        for node in graph.node:
            read.update(node.input)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    collect(attribute.g)
                for body in attribute.graphs:
                    collect(body)

    collect(model.graph)
    inputs = {value.name for value in model.graph.input}
    return sum(1 for tensor in model.graph.initializer if tensor.name not in read and tensor.name not in inputs)
