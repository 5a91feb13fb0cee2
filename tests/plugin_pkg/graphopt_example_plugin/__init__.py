"""graphopt-example-plugin: a tiny third-party plugin, as docs/design.md describes one.

Registered through `[project.entry-points.graphopt] example = "graphopt_example_plugin"`;
graphopt's plugin tests use it to check discovery, option parsing, stats in the report,
lossy-budget verification and how a pass that raises is reported.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

import graphopt

__all__ = ["DropIdentity", "ScaleWeights", "Explode", "graphopt_register_passes"]


class DropIdentity(graphopt.Pass):
    """Removes Identity nodes, rewiring their readers to the Identity's input.

    An Identity whose output is a graph output is kept when `keep_outputs` is true (the
    default), since removing it would rename an output. Only the main graph is visited; nested
    bodies are left alone on purpose. Lossless: outputs are bit-identical.
    """

    name = "drop-identity"
    lossless = True

    @dataclasses.dataclass
    class Options:
        keep_outputs: bool = True  # keep an Identity whose output is a graph output
        min_count: int = 0  # do nothing unless at least this many Identity nodes can go

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        removable = [node for node in graph.nodes if self._removable(graph, node)]
        if not removable or len(removable) < self.options.min_count:
            return graphopt.PassResult(changed=False, stats={"removed": 0})
        for node in removable:
            source, target = node.inputs[0], node.outputs[0]
            for reader in list(target.outputs):
                for index, tensor in enumerate(reader.inputs):
                    if tensor is target:
                        reader.inputs[index] = source
            for index, tensor in enumerate(graph.outputs):
                if tensor is target:  # keep_outputs=False: the source takes over the output's name
                    output_name = target.name
                    target.name = f"{output_name}/dropped_identity"
                    source.name = output_name
                    graph.outputs[index] = source
            node.inputs.clear()
            node.outputs.clear()
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        ctx.logger.info("drop-identity: removed %d", len(removable))
        return graphopt.PassResult(changed=True, stats={"removed": len(removable)})

    def _removable(self, graph: gs.Graph, node: gs.Node) -> bool:
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1:
            return False
        source, target = node.inputs[0], node.outputs[0]
        if not any(tensor is target for tensor in graph.outputs):
            return True
        # Renaming `source` to the output's name is only safe when nothing else names it.
        interface = list(graph.inputs) + list(graph.outputs)
        return (
            not self.options.keep_outputs
            and not isinstance(source, gs.Constant)
            and not any(tensor is source for tensor in interface)
        )


class ScaleWeights(graphopt.Pass):
    """Multiplies the first float initializer by `factor` (a stand-in for a lossy rewrite).

    Lossy: held to its own `budget` option. A factor of 1.0 changes nothing. Deliberately not
    idempotent (a second run scales again): it exists to exercise budget verification, and a
    real pass must be idempotent (docs/design.md, "The pass contract").
    """

    name = "scale-weights"
    lossless = False

    @dataclasses.dataclass
    class Options:
        factor: float = 1.0  # what the first float initializer is multiplied by
        budget: str = "cos=0.999"  # accuracy budget this pass must keep

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        if self.options.factor == 1.0:
            return graphopt.PassResult(changed=False, stats={"scaled": 0})
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and np.issubdtype(tensor.values.dtype, np.floating):
                scaled = (tensor.values * self.options.factor).astype(tensor.values.dtype)
                tensor.values = scaled
                return graphopt.PassResult(changed=True, stats={"scaled": 1, "tensor": tensor.name})
        return graphopt.PassResult(changed=False, stats={"scaled": 0})


class Explode(graphopt.Pass):
    """Always raises RuntimeError("boom"), to test how a failing pass is reported."""

    name = "explode"
    lossless = True

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        raise RuntimeError("boom")


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(DropIdentity)
    registry.add(ScaleWeights)
    registry.add(Explode)
