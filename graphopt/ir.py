"""The IR passes see: onnx-graphsurgeon's `Graph`, plus what it lacks.

Traversal, sorting and dead-node sweeps live in `graphopt.ir_traversal` and are re-exported.

graphsurgeon compares tensors *by name*, so a dict or set keyed by tensors silently merges a
subgraph's `x` with the outer `x`. Everything here keys by identity (`id()`) or by node.

Round trip: `export_model(import_graph(m), m)` keeps every field of the ModelProto that
graphsurgeon does not model (IR version, producer, doc strings, metadata, training info),
merges opset imports (the original's versions win), and leaves local functions and
If/Loop/Scan bodies as they were unless a pass changed them.
"""

from __future__ import annotations

import contextlib
import gc

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.external_data import external_data_dir, spill_dir
from graphopt.mapped_weights import map_external_constants, spill_new_constants, unmap_external_constants
from graphopt.ir_traversal import (
    all_reads,
    iter_graphs,
    iter_nodes,
    node_subgraphs,
    remove_dead_nodes,
    remove_dead_nodes_in_level,
    toposort,
    toposorted_nodes,
)
from graphopt.proto_walk import copy_fields, iter_graph_protos
from graphopt.sparse_tensors import densify_sparse_tensors
from graphopt.subgraph_weights import hoist_shared_body_weights

__all__ = [
    "import_graph",
    "export_model",
    "release_graph",
    "iter_graphs",
    "node_subgraphs",
    "iter_nodes",
    "producer",
    "consumers",
    "graph_output_ids",
    "constant_value",
    "replace_all_uses",
    "to_networkx",
    "all_reads",
    "toposort",
    "toposorted_nodes",
    "remove_dead_nodes",
    "remove_dead_nodes_in_level",
    "opset_version",
    "quiet_graphsurgeon",
    "collector_paused",
    "refresh_shapes",
    "apply_inferred_shapes",
    "is_static_shape",
]

# Fields of ModelProto rebuilt from the graph; every other field is carried over verbatim.
_REBUILT_FIELDS = {"graph", "functions", "opset_import"}


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """The model's main graph as a graphsurgeon Graph (weights load lazily).

    An initializer that is also a graph input (IR >= 4) is a default the caller may override,
    so it is imported as an input Variable, not as a Constant a pass could fold away.
    """
    model = densify_sparse_tensors(model)  # graphsurgeon would drop them
    with quiet_graphsurgeon(), collector_paused():
        graph = gs.import_onnx(model)
    folder = external_data_dir(model)
    if folder is not None:
        map_external_constants(iter_graphs(graph), folder)
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


def export_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Exports `graph`, carrying over what graphsurgeon drops from the `template` model."""
    if external_data_dir(template) is not None:
        spill = spill_dir(template)
        if spill is not None:
            spill_new_constants(graph, spill)
        unmap_external_constants(iter_graphs(graph))
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


def release_graph(graph: gs.Graph, template: onnx.ModelProto) -> None:
    """Frees `graph` now when its constants map `template`'s external data files.

    A graphsurgeon graph is cyclic (tensors and nodes list each other), so only the cycle
    collector frees it; until then the weights it mapped, and the arrays a pass made, stay
    resident while onnxruntime loads the exported model, doubling peak memory on a
    multi-GiB model. The graph is unusable afterwards.
    """
    if external_data_dir(template) is not None:
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


def refresh_shapes(graph: gs.Graph) -> int:
    """Fills in dtypes and shapes that ONNX shape inference now knows; returns tensors updated.

    A rewrite leaves the tensors it creates without shapes until the next inference, so a pass
    that decides by shape (folding a `Shape`, a size cap) would find more to do when run again.
    Running this between fix-point rounds makes such a pass idempotent. Main graph only.
    """
    # Weights still mapped from the input's files go out as their file references (inference
    # needs no values of them), not read into the throwaway proto: 2.4 GiB on the scale model.
    unmap_external_constants(iter_graphs(graph))
    with _large_constants_as_placeholders(graph), quiet_graphsurgeon():
        model = gs.export_onnx(graph, do_type_check=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # a graph inference cannot follow keeps the shapes it had
        return 0
    return apply_inferred_shapes(graph, inferred)


# Shape tensors (what data propagation reads) are far smaller than this; weights are larger.
_PLACEHOLDER_BYTES = 4096


@contextlib.contextmanager
def _large_constants_as_placeholders(graph: gs.Graph):
    """Exports large in-memory constants as dims-only external references while the block runs.

    Shape inference reads a weight's dims, never its values, but exporting and serialising the
    values cost more than the inference itself: on PP-OCRv4 rec, `reshape_own_dims`' five
    refreshes spent most of their 0.44 s copying 10 MB of weights in and out of protos.
    """
    swapped = []
    for owner in iter_graphs(graph):
        for tensor in owner.tensors().values():
            values = getattr(tensor, "_values", None) if isinstance(tensor, gs.Constant) else None
            if isinstance(values, np.ndarray) and values.nbytes >= _PLACEHOLDER_BYTES and values.dtype.kind in "biufc":
                placeholder = onnx.TensorProto(name=tensor.name, dims=values.shape, data_location=onnx.TensorProto.EXTERNAL,
                                               data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype))
                entry = placeholder.external_data.add()
                entry.key, entry.value = "location", "graphopt-shape-inference-placeholder"
                swapped.append((tensor, values))
                tensor._values = gs.ir.tensor.LazyValues(placeholder)
    try:
        yield
    finally:
        for tensor, values in swapped:
            tensor._values = values


def apply_inferred_shapes(graph: gs.Graph, inferred: onnx.ModelProto) -> int:
    """Copies the shapes `inferred` (an export of `graph`, shape-inferred) knows into `graph`.

    Returns tensors updated. Main graph only; a tensor whose shape is already static keeps it.
    """
    known = {value.name: value.type.tensor_type for value in inferred.graph.value_info}
    updated = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) or tensor.name not in known or is_static_shape(tensor.shape):
            continue
        tensor_type = known[tensor.name]
        if not tensor_type.HasField("shape") or not tensor_type.elem_type:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
        if tensor.shape is not None and len(tensor.shape) == len(shape) and list(tensor.shape) == shape:
            continue
        tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        tensor.shape = shape
        updated += 1
    return updated


def is_static_shape(shape) -> bool:
    """Whether every dimension of `shape` is a known non-negative integer."""
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


def _merged_opsets(original, exported) -> list[onnx.OperatorSetIdProto]:
    """The original's opsets, a domain a pass newly uses, and a version a pass raised (never lowered)."""
    versions = {entry.domain: entry.version for entry in original}
    for entry in exported:
        versions[entry.domain] = max(entry.version, versions.get(entry.domain, 0))
    return [onnx.helper.make_opsetid(domain, version) for domain, version in versions.items()]


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
