"""Walking a ModelProto: its graphs, its tensors wherever they sit, their sizes; copying and serialising it."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import onnx
from google.protobuf.message import EncodeError

__all__ = ["iter_graph_protos", "iter_tensors", "tensor_nbytes", "copy_model", "copy_fields",
           "field_kinds", "PROTOBUF_LIMIT", "serialized_bytes", "serialized_too_big"]


# Attribute kinds that hold graphs or tensors. An attribute is told by its `type` (an int
# compare) rather than by `HasField`: these walks visit every attribute of every node several
# times a run. Only an IR 1 model may leave `type` unset; such an attribute is looked into.
_A = onnx.AttributeProto
_HOLDERS = {_A.GRAPH, _A.GRAPHS, _A.TENSOR, _A.TENSORS, _A.UNDEFINED}
_GRAPH_HOLDERS = {_A.GRAPH, _A.GRAPHS, _A.UNDEFINED}


def iter_graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every If/Loop/Scan body nested in it, depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type in _GRAPH_HOLDERS:
                if attribute.HasField("g"):
                    yield from iter_graph_protos(attribute.g)
                for body in attribute.graphs:
                    yield from iter_graph_protos(body)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, Constant attributes, subgraphs, functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _nodes_tensors(function.node)


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


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _nodes_tensors(graph.node)


def _nodes_tensors(nodes) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.type in _HOLDERS:
                yield from _attribute_tensors(attribute)


def _attribute_tensors(attribute: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    if attribute.HasField("g"):
        yield from _graph_tensors(attribute.g)
    for graph in attribute.graphs:
        yield from _graph_tensors(graph)


# Protobuf cannot serialise a message of 2 GiB or more; stay clear of it with some headroom
# for the graph structure itself.
PROTOBUF_LIMIT = 2**31 - 64 * 2**20


def serialized_bytes(model: onnx.ModelProto) -> bytes | None:
    """`model` serialised, or None when protobuf cannot hold it (`PROTOBUF_LIMIT`)."""
    try:
        data = model.SerializeToString()
    except EncodeError:  # what upb raises at 2 GiB
        return None
    return data if len(data) < PROTOBUF_LIMIT else None


def serialized_too_big(model: onnx.ModelProto) -> bool:
    """Whether `model`, as held in memory, is too big for protobuf to serialise."""
    try:
        return model.ByteSize() >= PROTOBUF_LIMIT
    except Exception:  # noqa: BLE001 - protobuf refuses to size a message over 2 GiB
        return True


def copy_fields(source, target, *, skip=()) -> None:
    """Copies every set field of the message `source` but those named in `skip` onto `target`, of the same type.

    Field by field rather than through `ListFields`, which hands out a copy of every set bytes
    field, a skipped one too: a weight's raw data, copied to be thrown away.
    """
    for field, kind in field_kinds(type(source)):
        name = field.name
        if name in skip:
            continue
        if kind == "repeated":
            values = getattr(source, name)
            if len(values):
                getattr(target, name).extend(values)
        elif source.HasField(name):
            if kind == "message":
                getattr(target, name).CopyFrom(getattr(source, name))
            else:
                setattr(target, name, getattr(source, name))


@functools.cache
def field_kinds(message_type) -> list[tuple[object, str]]:
    """(field descriptor, "repeated" | "message" | "scalar") for each field of a proto2 message type.

    Repeatedness is read off an empty message: protobuf 7 dropped `FieldDescriptor.label`.
    """
    empty = message_type()
    kinds = []
    for field in message_type.DESCRIPTOR.fields:
        value = getattr(empty, field.name)
        kind = "repeated" if hasattr(value, "extend") else "message" if field.type == field.TYPE_MESSAGE else "scalar"
        kinds.append((field, kind))
    return kinds


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
