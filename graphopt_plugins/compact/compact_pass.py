"""The `compact` pass: the bytes of a file that are not weights, made smaller without changing the model."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
import onnx.defs
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

import graphopt
from graphopt.graph_queries import iter_graphs, node_subgraphs

__all__ = ["CompactModel"]


class CompactModel(graphopt.Pass):
    """Makes the file smaller without changing the model: node names dropped, inner tensors t0, t1, …, default attributes dropped.

    What it rewrites, in the main graph and every If/Loop/Scan body:
    - node names are emptied (ONNX makes them optional; nothing computes with them);
    - every tensor that is not a graph input or output gets a short name, `t<i>` in the order
      the graph is written (a name taken by an input or output is skipped), weights included;
    - an attribute equal to its schema's default (Conv `group=1`, `dilations` has none, so it
      stays) is dropped: ONNX defines an absent attribute as its default.
    What it never touches: the model's input and output names, local functions (their names are
    their own scope), metadata and doc strings (they are the author's content), attributes of
    ops outside the default domain, and a Constant or tensor-valued attribute. value_info the
    input carried for an inner tensor goes with its old name.

    Why: in a small model the names are a large share of the file (a 15 kB CNN: 10% names,
    82% weights), so float16 weights alone cannot halve it. The price is what the names were for:
    onnxruntime's errors and profiles, Netron and any tool that picks a node or an inner tensor
    by name (graphopt's `keep` globs, onnxruntime's `nodes_to_exclude`) see `t17` or nothing. Run it
    last, on the file you ship, and keep the uncompacted one to debug. Lossless.
    """

    name = "compact"
    lossless = True
    after = ("opset", "cleanup", "fuse", "factorize", "prune", "fp16", "quantize")

    @dataclasses.dataclass
    class Options:
        keep_node_names: bool = False  # leave node names as they are
        keep_tensor_names: bool = False  # leave inner tensor names as they are
        keep_default_attributes: bool = False  # leave attributes that equal their schema's default

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        options = self.options
        levels = list(iter_graphs(graph, functions=False))
        stats = {"node_names_dropped": 0 if options.keep_node_names else _drop_node_names(levels),
                 "tensors_renamed": 0 if options.keep_tensor_names else _shorten_tensor_names(graph, levels),
                 "default_attributes_dropped": 0 if options.keep_default_attributes else _drop_default_attributes(levels, ctx.opset)}
        ctx.logger.info("compact: %d node names dropped, %d tensors renamed, %d default attributes dropped",
                        stats["node_names_dropped"], stats["tensors_renamed"], stats["default_attributes_dropped"])
        return graphopt.PassResult(changed=any(stats.values()), stats=stats)


def _drop_node_names(levels: list[gs.Graph]) -> int:
    dropped = 0
    for level in levels:
        for node in level.nodes:
            if node.name:
                node.name, dropped = "", dropped + 1
    return dropped


def _shorten_tensor_names(graph: gs.Graph, levels: list[gs.Graph]) -> int:
    """Renames every tensor but the main graph's inputs and outputs to `t<i>`; how many changed.

    A body reads outer tensors by name and onnx-graphsurgeon gives it the outer tensor object
    itself, so renaming the object keeps every reference consistent; ids key the walk, since
    graphsurgeon tensors compare equal by name."""
    interface = {id(tensor) for tensor in [*graph.inputs, *graph.outputs]}
    reserved = {tensor.name for tensor in [*graph.inputs, *graph.outputs]}
    ordered: dict[int, gs.Tensor] = {}
    for level in levels:
        for tensor in [*level.inputs, *(t for node in level.nodes for t in [*node.inputs, *node.outputs]), *level.outputs]:
            if tensor.name and id(tensor) not in interface:
                ordered.setdefault(id(tensor), tensor)
    renamed, counter = 0, 0
    for tensor in ordered.values():
        short = f"t{counter}"
        while short in reserved:
            counter += 1
            short = f"t{counter}"
        counter += 1
        if tensor.name != short:
            _own_proto(tensor)
            tensor.name, renamed = short, renamed + 1
    return renamed


def _own_proto(tensor: gs.Tensor) -> None:
    """Gives a lazily loaded weight its own TensorProto: graphsurgeon's export writes the new name
    into the proto it was imported from, which is the input model's (the pipeline still reads it)."""
    if isinstance(tensor, gs.Constant) and type(tensor._values) is LazyValues:
        proto = onnx.TensorProto()
        proto.CopyFrom(tensor._values.tensor)
        tensor._values = LazyValues(proto)


def _drop_default_attributes(levels: list[gs.Graph], opset: int) -> int:
    dropped = 0
    for level in levels:
        for node in level.nodes:
            if (node.domain or "") not in ("", "ai.onnx") or not node.attrs or node_subgraphs(node):
                continue
            defaults = _defaults(node.op, opset)
            for key in [key for key, value in node.attrs.items() if key in defaults and _equal(value, defaults[key])]:
                del node.attrs[key]
                dropped += 1
    return dropped


@functools.cache
def _defaults(op: str, opset: int) -> dict:
    """The schema's default value of each attribute that has one, as python values."""
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return {}
    found = {}
    for name, attribute in schema.attributes.items():
        default = attribute.default_value
        if default is not None and default.type not in (onnx.AttributeProto.UNDEFINED, onnx.AttributeProto.TENSOR,
                                                        onnx.AttributeProto.GRAPH, onnx.AttributeProto.SPARSE_TENSOR):
            found[name] = onnx.helper.get_attribute_value(default)
    return found


def _equal(value, default) -> bool:
    """Whether a graphsurgeon attribute value equals a schema default, with its type (1 is not 1.0)."""
    if isinstance(default, bytes):
        return isinstance(value, str) and value.encode() == default
    if isinstance(default, list):
        return isinstance(value, (list, tuple)) and len(value) == len(default) and all(_equal(v, d) for v, d in zip(value, default))
    if isinstance(default, float):  # stored as float32 in the file: compare there
        return isinstance(value, float) and np.float32(value) == np.float32(default)
    return type(value) is type(default) and value == default
