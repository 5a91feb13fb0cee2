"""Walking a ModelProto: its graphs, its tensors wherever they sit, and their sizes."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import onnx

__all__ = ["iter_graph_protos", "iter_tensors", "tensor_nbytes", "initializer_nbytes", "copy_model"]


def iter_graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every If/Loop/Scan body nested in it, depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_graph_protos(attribute.g)
            for body in attribute.graphs:
                yield from iter_graph_protos(body)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, Constant attributes, subgraphs, functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """The in-memory size of a tensor's values, whether stored inline or externally."""
    # math.prod over Python ints and a cached itemsize: this runs once per tensor, several
    # times per pass, so on a 100k-node graph np.prod's overhead alone took seconds.
    count = math.prod(tensor.dims)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * _itemsize(tensor.data_type)


@functools.cache
def _itemsize(data_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return 1


def initializer_nbytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(tensor) for tensor in iter_tensors(model))


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
