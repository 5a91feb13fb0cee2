"""Walking a ModelProto: its graphs, its tensors wherever they sit, and their sizes."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import onnx

__all__ = ["iter_graph_protos", "iter_tensors", "tensor_nbytes", "initializer_nbytes", "copy_model", "copy_fields",
           "field_kinds", "stored_size", "size_without_value_info", "varint_size"]


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


def stored_size(data: bytes, model: onnx.ModelProto, *, value_info: bool = True, graph_delta: int = 0) -> int:
    """The size of `model`, serialised as `data`; with `value_info=False`, as if its main graph had none.

    `graph_delta`: how many bytes longer `model`'s main graph is than the one in `data` (the
    weights `graphopt.weightless` left out of it).
    """
    trim = not value_info and len(model.graph.value_info)
    if not graph_delta and not trim:
        return len(data)
    graph_size = _field_length(data, _MODEL_GRAPH_FIELD)
    size = len(data) - varint_size(graph_size) - graph_size
    graph_size += graph_delta
    size += varint_size(graph_size) + graph_size
    return size_without_value_info(size, graph_size, model.graph.value_info) if trim else size


def size_without_value_info(model_size: int, graph_size: int, value_info) -> int:
    """A model's serialised size less its main graph's `value_info`, from its own and its graph's size.

    The graph is a length-delimited field of the model, each value_info one of the graph, all
    with one-byte tags: what changes is the entries and the varint giving the graph's length.
    """
    trimmed = graph_size - sum(1 + varint_size(size) + size for size in (entry.ByteSize() for entry in value_info))
    return model_size - varint_size(graph_size) - graph_size + varint_size(trimmed) + trimmed


_MODEL_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number


def varint_size(value: int) -> int:
    """How many bytes protobuf's varint encoding of `value` (>= 0) takes."""
    return max(1, (value.bit_length() + 6) // 7)


def _field_length(data: bytes, number: int) -> int:
    """The length of the first length-delimited field `number` at the top level of the wire bytes `data`.

    Reads the model's few top-level fields only (ir_version, producer…): sizing the graph
    through protobuf would serialise it again.
    """
    position = 0
    while position < len(data):
        key, position = _read_varint(data, position)
        wire_type = key & 7
        if wire_type == 0:
            _, position = _read_varint(data, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length, position = _read_varint(data, position)
            if key >> 3 == number:
                return length
            position += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
    raise ValueError(f"no field {number} in the message")


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


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
