"""Crossing between ModelProto and onnx-graphsurgeon's `Graph`: import, export, the envelope.

Round trip: `export_model(import_graph(m), m)` keeps every field of the ModelProto that
graphsurgeon does not model (IR version, producer, doc strings, metadata, training info),
merges opset imports (the original's versions win), and leaves local functions and
If/Loop/Scan bodies as they were unless a pass changed them. `export_model(..., weights=
"placeholders")` is the form ONNX's C++ side (checker, shape inference) gets: large weights
as dims-only graph inputs, so none of their bytes is copied through it.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.external_data import external_folder
from graphopt.graph_queries import iter_graphs, replace_all_uses
from graphopt.mapped_weights import map_external_constants, spill_new_constants, unmap_external_constants
from graphopt.proto_walk import copy_fields, iter_graph_protos, tensor_nbytes
from graphopt.sparse_tensors import densify_sparse_tensors
from graphopt.subgraph_weights import hoist_shared_body_weights

__all__ = [
    "import_graph",
    "export_model",
    "stand_in_weights",
    "release_graph",
    "quiet_graphsurgeon",
    "collector_paused",
    "PLACEHOLDER_BYTES",
]

# Fields of ModelProto rebuilt from the graph; every other field is carried over verbatim.
_REBUILT_FIELDS = {"graph", "functions", "opset_import"}

# Weights of this many bytes or more cross to ONNX's C++ side as dims-only stand-ins. Shape
# tensors (what data propagation reads) are far smaller; int32/int64 tensors always cross whole,
# since ONNX takes shapes, axes, pads and counts as those types.
PLACEHOLDER_BYTES = 4096
_SHAPE_TYPES = (np.int32, np.int64)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """The model's main graph as a graphsurgeon Graph (weights load lazily).

    An initializer that is also a graph input (IR >= 4) is a default the caller may override,
    so it is imported as an input Variable, not as a Constant a pass could fold away.
    """
    model = densify_sparse_tensors(model)  # graphsurgeon would drop them
    with quiet_graphsurgeon(), collector_paused():
        graph = gs.import_onnx(model)
    map_external_constants(iter_graphs(graph))
    overridable = _overridable_inputs(model)
    if overridable:
        constants = {t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant) and t.name in overridable}
        imported = {t.name: t for t in graph.inputs}
        inputs = []
        for value in model.graph.input:
            if value.name in overridable:
                constant = constants.get(value.name)
                dtype = onnx.helper.tensor_dtype_to_np_dtype(overridable[value.name].data_type)
                variable = gs.Variable(value.name, dtype=dtype, shape=list(overridable[value.name].dims))
                if constant is not None:
                    replace_all_uses(constant, variable)
                inputs.append(variable)
            else:
                inputs.append(imported.get(value.name))
        graph.inputs = [t for t in inputs if t is not None]
    return graph


def _overridable_inputs(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers listed as graph inputs, which onnxruntime lets a caller override from IR 4 on."""
    if model.ir_version < 4:
        return {}  # before IR 4 every initializer is listed as an input, and none is overridable
    names = {value.name for value in model.graph.input}
    return {t.name: t for t in model.graph.initializer if t.name in names}


def export_model(
    graph: gs.Graph, template: onnx.ModelProto, *, weights: str = "refs", spill_dir: Path | None = None
) -> onnx.ModelProto:
    """Exports `graph`, carrying over what graphsurgeon drops from the `template` model.

    `weights`: "refs" keeps weights still mapped from data files as their file references,
    and with `spill_dir` moves large new ones to a file there; "placeholders" turns every
    large weight of the main graph into a dims-only graph input (`stand_in_weights`), for the
    checker and shape inference, without copying its bytes.
    """
    unmap_external_constants(iter_graphs(graph))
    if weights == "placeholders":
        with _stubbed_weights(graph):
            return stand_in_weights(_exported(graph, template), in_place=True)[0]
    if spill_dir is not None:
        spill_new_constants(graph, spill_dir)
    return _exported(graph, template)


def _exported(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    with quiet_graphsurgeon(), collector_paused():
        exported = gs.export_onnx(graph, do_type_check=False)
    # The exported proto becomes the model, its other fields the template's: copying its graph
    # into a fresh one would copy every weight once more.
    model = exported
    opsets = _merged_opsets(template.opset_import, exported.opset_import)
    for field, _ in model.ListFields():
        if field.name not in _REBUILT_FIELDS:
            model.ClearField(field.name)
    copy_fields(template, model, skip=_REBUILT_FIELDS)
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    hoist_shared_body_weights(model)  # graphsurgeon writes one copy per body that reads it
    _restore_interface(model, template)
    _restore_annotations(model, template)
    return model


@contextlib.contextmanager
def _stubbed_weights(graph: gs.Graph):
    """Makes the main graph's large constants export as dims-only external stubs while the block runs."""
    swapped = []
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        values = tensor._values
        kind = getattr(values.dtype, "kind", None)  # graphsurgeon gives some ONNX types no numpy dtype
        if kind not in ("b", "i", "u", "f", "c") or values.dtype in _SHAPE_TYPES or values.nbytes < PLACEHOLDER_BYTES:
            continue
        stub = _placeholder(tensor.name, values.shape, onnx.helper.np_dtype_to_tensor_dtype(values.dtype))
        swapped.append((tensor, values))
        tensor._values = LazyValues(stub)
    try:
        yield
    finally:
        for tensor, values in swapped:
            tensor._values = values


def stand_in_weights(model: onnx.ModelProto, *, value_info: bool = True, constants: bool = False, in_place: bool = False,
                     stubs: dict[int, onnx.NodeProto] | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """`model` as ONNX's checker and shape inference get it: each large weight of the main graph
    a graph input of its type and shape (and {name: bytes} of those), or `model` itself when
    none is large.

    Neither reads a weight's values: a weight's shape and type come from its dims, and data
    propagation follows only small integer tensors. Weights in data files stand in too (the
    checker cannot read them by absolute path). A weight whose bytes do not fit its shape
    crosses whole, so the checker names it. `model` is not modified, nor its weights copied.
    `value_info=False` leaves the main graph's value_info out of a copy (a caller about to
    drop them spares copying them); `model` itself, when it comes back, keeps them.

    `constants=True` also turns each large value of a main-graph Constant node (where
    paddle2onnx keeps every weight) into a dims-only placeholder (`constant_placeholders`),
    for a shape inference whose result is only read, never checked nor used as the model: the
    checker would take a placeholder for a data file, and inference gives the node back so.
    `stubs`: `constant_placeholders(model.graph)` when the caller has it (a model whose
    nodes several readers stand in, read once). `in_place=True` makes `model` itself the
    placeholder form (a fresh export nobody else holds: no copy of its graph), `value_info` and
    `constants` aside.
    """
    moved = {}
    for tensor in model.graph.initializer:
        size = _stand_in_size(tensor)
        if size is not None:
            moved[tensor.name] = size
    stubs = (constant_placeholders(model.graph) if stubs is None else stubs) if constants else {}
    if not moved and not stubs:
        return model, moved
    declared = {value.name for value in model.graph.input}
    stand_ins = [onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                 for t in model.graph.initializer if t.name in moved and t.name not in declared]
    if in_place and not stubs and value_info:
        initializers = model.graph.initializer
        for index in reversed([index for index, t in enumerate(initializers) if t.name in moved]):
            del initializers[index]
        model.graph.input.extend(stand_ins)
        return model, moved
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, skip=("graph",))
    skipped = ("initializer",) + (() if value_info else ("value_info",)) + (("node",) if stubs else ())
    copy_fields(model.graph, skeleton.graph, skip=skipped)
    if stubs:
        skeleton.graph.node.extend(stubs.get(index, node) for index, node in enumerate(model.graph.node))
    skeleton.graph.initializer.extend(t for t in model.graph.initializer if t.name not in moved)
    skeleton.graph.input.extend(stand_ins)
    return skeleton, moved


def constant_placeholders(graph: onnx.GraphProto) -> dict[int, onnx.NodeProto]:
    """{index: stand-in} for each Constant node of `graph` whose value would cross as a stand-in
    were it an initializer: the node with its value a dims-only external stub, no bytes copied."""
    stubs = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        if attribute.name != "value" or external_data_helper.uses_external_data(attribute.t) or _stand_in_size(attribute.t) is None:
            continue
        stub = onnx.NodeProto()
        copy_fields(node, stub, skip=("attribute",))
        value = stub.attribute.add()
        copy_fields(attribute, value, skip=("t",))
        value.t.CopyFrom(_placeholder(attribute.t.name, attribute.t.dims, attribute.t.data_type))
        stubs[index] = stub
    return stubs


def _placeholder(name: str, dims, data_type: int) -> onnx.TensorProto:
    """A dims-only tensor whose values are said to be in a file no one reads."""
    stub = onnx.TensorProto(name=name, dims=dims, data_location=onnx.TensorProto.EXTERNAL, data_type=data_type)
    entry = stub.external_data.add()
    entry.key, entry.value = "location", "graphopt-placeholder"
    return stub


def _stand_in_size(tensor: onnx.TensorProto) -> int | None:
    """The bytes of a weight that crosses as a stand-in, None for one that crosses whole."""
    if external_data_helper.uses_external_data(tensor):
        return tensor_nbytes(tensor)
    if tensor.data_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.STRING):
        return None
    if not tensor.HasField("raw_data"):
        return None
    size = tensor_nbytes(tensor)
    return size if size >= PLACEHOLDER_BYTES and len(tensor.raw_data) == size else None


def release_graph(graph: gs.Graph, template: onnx.ModelProto) -> None:
    """Frees `graph` now when its constants map `template`'s external data files.

    A graphsurgeon graph is cyclic (tensors and nodes list each other), so only the cycle
    collector frees it; until then the weights it mapped, and the arrays a pass made, stay
    resident while onnxruntime loads the exported model, doubling peak memory on a
    multi-GiB model. The graph is unusable afterwards.
    """
    if external_folder(template) is not None:
        for links in (graph.nodes, graph.inputs, graph.outputs):
            links.clear()  # the caller's frame still holds `graph`: cut what reaches the weights
        gc.collect()


def _restore_annotations(model: onnx.ModelProto, template: onnx.ModelProto) -> None:
    """Puts back the doc strings and metadata graphsurgeon drops from nodes, graphs and functions.

    Nodes are matched by name and op type (at any depth); a node a pass created or renamed has
    no annotation to get back.
    """
    annotated: dict[tuple[str, str], onnx.NodeProto] = {}
    for graph in iter_graph_protos(template.graph):
        for node in graph.node:
            if node.name and (node.doc_string or len(getattr(node, "metadata_props", ()))):
                annotated.setdefault((node.name, node.op_type), node)
    for function in template.functions:
        for node in function.node:
            if node.name and (node.doc_string or len(getattr(node, "metadata_props", ()))):
                annotated.setdefault((node.name, node.op_type), node)
    if annotated:
        nodes = [node for graph in iter_graph_protos(model.graph) for node in graph.node]
        nodes += [node for function in model.functions for node in function.node]
        for node in nodes:
            source = annotated.get((node.name, node.op_type))
            if source is not None:
                _copy_annotation(source, node)
    _copy_annotation(template.graph, model.graph)
    functions = {(f.domain, f.name): f for f in template.functions}
    for function in model.functions:
        if (function.domain, function.name) in functions:
            _copy_annotation(functions[(function.domain, function.name)], function)


def _copy_annotation(source, target) -> None:
    if source.doc_string and not target.doc_string:
        target.doc_string = source.doc_string
    if hasattr(source, "metadata_props") and len(source.metadata_props) and not len(target.metadata_props):
        target.metadata_props.extend(source.metadata_props)


def _restore_interface(model: onnx.ModelProto, template: onnx.ModelProto) -> None:
    """Puts back what graphsurgeon's export loses of the model's interface.

    - the default value of an overridable input (an initializer that is also a graph input);
    - before IR 4, the rule that every initializer is also listed as a graph input;
    - each graph input's and output's type, exactly as declared (graphsurgeon drops sequence
      element shapes, for one).
    """
    initializers = {t.name for t in model.graph.initializer}
    inputs = {value.name for value in model.graph.input}
    for name, default in _overridable_inputs(template).items():
        if name in inputs and name not in initializers:
            model.graph.initializer.append(default)
    if model.ir_version < 4:
        for tensor in model.graph.initializer:
            if tensor.name not in inputs:
                model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    for exported, original in ((model.graph.input, template.graph.input), (model.graph.output, template.graph.output)):
        declared = {value.name: value for value in original}
        for value in exported:
            if value.name in declared:
                value.CopyFrom(declared[value.name])


def _merged_opsets(original, exported) -> list[onnx.OperatorSetIdProto]:
    """The original's opsets, a domain a pass newly uses, and a version a pass raised (never lowered)."""
    versions = {entry.domain: entry.version for entry in original}
    for entry in exported:
        versions[entry.domain] = max(entry.version, versions.get(entry.domain, 0))
    return [onnx.helper.make_opsetid(domain, version) for domain, version in versions.items()]


@contextlib.contextmanager
def quiet_graphsurgeon():
    """Silences graphsurgeon's own logger (it prints to the terminal) for the duration.

    Its logger is process-global, so the previous severity is restored on the way out.
    """
    previous = gs.logger.G_LOGGER.severity
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL
    try:
        yield
    finally:
        gs.logger.G_LOGGER.severity = previous


@contextlib.contextmanager
def collector_paused():
    """Pauses Python's cyclic garbage collector for the duration; reference counting still frees.

    Importing, rewriting or exporting a 100k-node graph allocates millions of objects that stay
    alive, and every full collection walks all of them: with the collector on, import, cleanup,
    fuse and export cost 1.7x more per node at 100k nodes than at 1k, against 1.2x with it
    paused. The cycles a pass leaves behind (a removed node and its tensors point at each other)
    are collected once the collector runs again. Restored only if it was on, so nesting is safe.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
