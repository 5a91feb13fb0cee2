"""The `opset` pass: onnx's version converter as a pipeline stage."""

from __future__ import annotations

import dataclasses

import onnx
import onnx.defs
import onnx.version_converter
import onnx_graphsurgeon as gs

import graphopt
from graphopt import convert
from graphopt.errors import PreconditionError

__all__ = ["UpgradeOpset"]

_LOWEST_TARGET = 7  # onnxruntime runs no older default-domain opset; the converter itself reads older models (opset 1-6)


class UpgradeOpset(graphopt.Pass):
    """Converts the model to a newer default-domain opset, so later passes may use newer ops.

    Exporters of mobile models often write old opsets (PP-OCR: 11 and 12), where fused forms do
    not exist yet: LayerNormalization needs 17, HardSwish 14, Gelu 20, per-channel
    QuantizeLinear 13, int4 blocks 21. Run it first: `--passes opset,cleanup,fuse,quantize`.
    Uses onnx's version converter on the whole model, If/Loop/Scan bodies included. Never
    lowers an opset: a model already at or past `target` is left as it is. Refuses (and the
    pipeline goes on without it) a model the converter cannot convert, naming its reason.
    Lossless: the converted ops compute the same function.
    """

    name = "opset"
    lossless = True
    before = ("cleanup", "fuse", "factorize", "prune", "quantize")

    @dataclasses.dataclass
    class Options:
        target: int = 17  # the default-domain opset to convert to (never lowers)

        def __post_init__(self):
            newest = onnx.defs.onnx_opset_version()
            if not _LOWEST_TARGET <= self.target <= newest:
                raise ValueError(f"target must be between {_LOWEST_TARGET} and {newest} (this onnx's newest), not {self.target}")

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        current = ctx.opset
        if current >= self.options.target:
            return graphopt.PassResult(changed=False, stats={"from": current, "to": current})
        model = ctx.proto()
        try:
            converted = onnx.version_converter.convert_version(model, self.options.target)
        except Exception as error:  # the converter raises bare RuntimeErrors naming the op it lacks
            raise PreconditionError(f"pass 'opset': onnx's version converter cannot convert this model: "
                                    f"{str(error).splitlines()[0]}") from error
        _replace_graph(graph, convert.import_graph(converted))
        ctx.logger.info("opset: %d -> %d", current, self.options.target)
        return graphopt.PassResult(changed=True, stats={"from": current, "to": self.options.target})


def _replace_graph(graph: gs.Graph, fresh: gs.Graph) -> None:
    """Makes `graph` (the object the pipeline exports) the converted one, in place."""
    graph.nodes = fresh.nodes
    graph.inputs = fresh.inputs
    graph.outputs = fresh.outputs
    graph.opset = fresh.opset
    graph.import_domains = fresh.import_domains
    graph.functions = fresh.functions
