"""Evaluation of constant nodes numpy does not cover, in one onnxruntime session per graph level.

The session holds only the nodes to fold, their constant inputs as initializers, and every
output they write as a graph output; optimizations are off, so the values are what the runtime
computes node by node (and nothing is spent optimizing a graph that runs once). Tensors are
renamed inside the session model: a body may read an outer name, and names need not be unique
across the levels graphsurgeon lets us see.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

__all__ = ["evaluate_with_onnxruntime"]

logger = logging.getLogger(__name__)


def evaluate_with_onnxruntime(nodes: list[gs.Node], opsets: list[onnx.OperatorSetIdProto]) -> dict[int, np.ndarray]:
    """Values of the outputs of `nodes` (in topological order, every input a constant or written
    by an earlier one of them), keyed by `id(tensor)`. A batch the runtime rejects is retried
    node by node; a node it still rejects is left out, and so are the nodes reading it."""
    if not nodes:
        return {}
    try:
        return _run(nodes, opsets)
    except Exception as error:  # noqa: BLE001 - any rejection means: fold less, not fail
        logger.debug("onnxruntime rejected a batch of %d nodes (%s); evaluating them one by one", len(nodes), error)
    values: dict[int, np.ndarray] = {}
    for node in nodes:
        if not all(isinstance(t, gs.Constant) or not t.name or id(t) in values for t in node.inputs):
            continue  # it reads a node the runtime could not evaluate
        try:
            values.update(_run([node], opsets, known=values))
        except Exception as error:  # noqa: BLE001
            logger.debug("not folding %s (%s): onnxruntime could not evaluate it: %s", node.name, node.op, error)
    return values


def _run(nodes: list[gs.Node], opsets, known: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    known = known or {}
    names: dict[int, str] = {}

    def name_of(tensor: gs.Tensor) -> str:
        if not tensor.name:
            return ""  # an omitted optional input
        return names.setdefault(id(tensor), f"t{len(names)}")

    written = {id(t) for node in nodes for t in node.outputs}
    initializers, protos, outputs = [], [], []
    for node in nodes:
        proto = OnnxExporter.export_node(node)
        proto.ClearField("name")
        for index, tensor in enumerate(node.inputs):
            fresh = id(tensor) not in names
            proto.input[index] = name_of(tensor)
            if fresh and tensor.name and id(tensor) not in written:
                initializers.append(_initializer(tensor, known, proto.input[index]))
        for index, tensor in enumerate(node.outputs):
            proto.output[index] = name_of(tensor)
            outputs.append(tensor)
        protos.append(proto)
    graph = onnx.helper.make_graph(protos, "fold", [], [onnx.ValueInfoProto(name=names[id(t)]) for t in outputs], initializers)
    model = onnx.helper.make_model(graph, opset_imports=list(opsets))
    model.ir_version = onnx.helper.find_min_ir_version_for(list(opsets), True)
    import onnxruntime  # here, not at the top: `graphopt passes` loads this module and must not load onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results = session.run([names[id(t)] for t in outputs], {})
    return {id(tensor): value for tensor, value in zip(outputs, results) if isinstance(value, np.ndarray)}


def _initializer(tensor: gs.Tensor, known: dict[int, np.ndarray], name: str) -> onnx.TensorProto:
    if isinstance(tensor, gs.Constant):
        proto = OnnxExporter.export_tensor_proto(tensor)
        proto.name = name
        return proto
    return onnx.numpy_helper.from_array(known[id(tensor)], name)
