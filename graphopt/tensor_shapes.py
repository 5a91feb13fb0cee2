"""Tensor shapes in the graph: from a whole-graph ONNX inference (`refresh_shapes`,
`apply_inferred_shapes`), or carried forward from a few changed tensors node by node
(`propagate_shapes`).

A rewrite that makes one shape knowable (a Reshape target turned constant) used to need
`refresh_shapes`: export the whole graph, infer it, copy the shapes back, about 20 ms on
PP-OCRv4 rec, once per fix-point round. `propagate_shapes` re-infers only the nodes downstream
of what changed, with ONNX's own per-node shape functions, and a path stops where a node's
outputs come out as they were. It knows less than a whole-graph inference (no data propagation through
Shape arithmetic, no subgraph bodies), so it complements `refresh_shapes`, never replaces it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from graphopt.convert import export_model, quiet_graphsurgeon
from graphopt.graph_queries import node_subgraphs

__all__ = ["propagate_shapes", "node_positions", "refresh_shapes", "apply_inferred_shapes", "is_static_shape"]

# Constant inputs a shape function may read (a Reshape target, Slice bounds): shape-sized, not weights.
_DATA_ELEMENTS = 64


def propagate_shapes(graph: gs.Graph, changed: Iterable[gs.Tensor], position: dict[int, int] | None = None) -> int:
    """Re-infers the nodes of `graph` downstream of `changed`; returns the tensors whose shape it updated.

    `graph.nodes` must be in topological order; `position` (`node_positions(graph)`) may be
    passed by a caller propagating many times over an unchanged node list. A known dimension is
    never replaced by an unknown one or another size.
    """
    position = node_positions(graph) if position is None else position
    opsets = _opsets(graph)
    queue: list[tuple[int, int, gs.Node]] = []
    queued: set[int] = set()

    def enqueue_consumers(tensor: gs.Tensor) -> None:
        for node in tensor.outputs:
            if id(node) in position and id(node) not in queued:
                queued.add(id(node))
                heapq.heappush(queue, (position[id(node)], id(node), node))

    for tensor in changed:
        enqueue_consumers(tensor)
    updated = 0
    while queue:
        _, _, node = heapq.heappop(queue)
        for tensor in _infer_node(node, opsets):
            updated += 1
            enqueue_consumers(tensor)
    return updated


def node_positions(graph: gs.Graph) -> dict[int, int]:
    return {id(node): index for index, node in enumerate(graph.nodes)}


def _opsets(graph: gs.Graph) -> dict[str, int]:
    versions = {entry.domain: entry.version for entry in graph.import_domains or ()}
    versions.setdefault("", graph.opset)
    if "ai.onnx" in versions:
        versions.setdefault("", versions["ai.onnx"])
    return versions


def _infer_node(node: gs.Node, opsets: dict[str, int]) -> list[gs.Tensor]:
    """The outputs of `node` whose shapes its shape function now knows better; they are updated."""
    if any(True for _ in node_subgraphs(node)):
        return []
    domain = node.domain or ""
    try:
        schema = onnx.defs.get_schema(node.op, opsets.get(domain, 1), domain)
        types, data = _input_types(node)
        inferred = onnx.shape_inference.infer_node_outputs(
            schema, OnnxExporter.export_node(node), types, data,
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    except Exception:  # an op without a schema or a shape function that refuses: nothing learned
        return []
    updated = []
    for tensor in node.outputs:
        tensor_type = inferred.get(tensor.name)
        if tensor_type is not None and _update(tensor, tensor_type.tensor_type):
            updated.append(tensor)
    return updated


def _input_types(node: gs.Node) -> tuple[dict[str, onnx.TypeProto], dict[str, onnx.TensorProto]]:
    types, data = {}, {}
    for tensor in node.inputs:
        if not tensor.name:
            continue
        if tensor.dtype is None:
            raise ValueError(f"input '{tensor.name}' has no dtype")
        elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
        shape = None if tensor.shape is None else [d if isinstance(d, (int, np.integer)) and d >= 0 else
                                                   (d if isinstance(d, str) and d else None) for d in tensor.shape]
        types[tensor.name] = onnx.helper.make_tensor_type_proto(elem_type, shape)
        # sized by its shape first: reading `values` would load a weight still mapped from a file
        if isinstance(tensor, gs.Constant) and math.prod(tensor.shape) <= _DATA_ELEMENTS:
            data[tensor.name] = onnx.numpy_helper.from_array(np.asarray(tensor.values), tensor.name)
    return types, data


def _update(tensor: gs.Tensor, tensor_type: onnx.TypeProto.Tensor) -> bool:
    """Merges an inferred type into `tensor`, dim by dim; whether it learned anything."""
    learned = False
    if tensor.dtype is None and tensor_type.elem_type:
        tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        learned = True
    if not tensor_type.HasField("shape"):
        return learned
    inferred = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    current = None if tensor.shape is None else list(tensor.shape)
    if current is not None and len(current) != len(inferred):
        return learned  # a disagreement is for a whole-graph inference to settle
    merged = inferred if current is None else [_merged_dim(old, new) for old, new in zip(current, inferred)]
    if merged != current:
        tensor.shape = merged
        learned = True
    return learned


def _merged_dim(old, new):
    # A size beats a symbol or nothing; otherwise what the tensor had stands (its symbols come
    # from a whole-graph inference, where one name means one size).
    if _known(new) and not _known(old):
        return new
    return old if old is not None else new


def _known(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim >= 0


def refresh_shapes(graph: gs.Graph) -> int:
    """Fills in dtypes and shapes that ONNX shape inference now knows; returns tensors updated.

    A rewrite leaves the tensors it creates without shapes until the next inference, so a pass
    that decides by shape (folding a `Shape`, a size cap) would find more to do when run again.
    Running this between fix-point rounds makes such a pass idempotent. Main graph only.
    """
    with quiet_graphsurgeon():
        model = export_model(graph, onnx.ModelProto(), weights="placeholders")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # a graph inference cannot follow keeps the shapes it had
        return 0
    return apply_inferred_shapes(graph, inferred)


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
