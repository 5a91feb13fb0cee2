"""Reading and writing ONNX files safely.

Loading refuses external data that would be read from outside the model's own folder (a
crafted model must not make graphopt read `/etc/shadow` or a neighbour's file), and writing
is atomic: a temporary file in the target folder, checked, then renamed over the target.
How weights that stay in files are handled meanwhile is `graphopt.external_data`'s job.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError, Message
# onnx.shape_inference.infer_shapes parses its result back into a proto and drops the bytes,
# whose length is the model's size: the function under it returns them.
from onnx.onnx_cpp2py_export import shape_inference as c_shape_inference

from graphopt.errors import InputError, UsageError, first_line
from graphopt.external_data import (
    EXTERNAL_DIR_KEY,
    INLINE_EXTERNAL_BYTES,
    checkable_copy,
    external_data_dir,
    is_external_file_of,
    load_confined_external_data,
    materialize_external_data,
    same_file,
    uses_external_data,
    write_with_external_data,
)
from graphopt.proto_walk import (
    copy_model,
    field_kinds,
    initializer_nbytes,
    iter_graph_protos,
    iter_tensors,
    stored_size,
    tensor_nbytes,
)
from graphopt.weightless import skeleton_of

# The walkers and external-data helpers are re-exported: callers knew them from here first.
__all__ = [
    "PROTOBUF_LIMIT",
    "EXTERNAL_DIR_KEY",
    "INLINE_EXTERNAL_BYTES",
    "external_data_dir",
    "uses_external_data",
    "materialize_external_data",
    "serialized_too_big",
    "wire_bytes",
    "inferred_with_size",
    "read_model",
    "load_model",
    "save_model",
    "check_model",
    "inferred_and_checked",
    "iter_tensors",
    "iter_graph_protos",
    "tensor_nbytes",
    "initializer_nbytes",
    "write_with_external_data",
    "same_file",
    "copy_model",
]

logger = logging.getLogger(__name__)

# Protobuf cannot serialise a message of 2 GiB or more; stay clear of it with some headroom
# for the graph structure itself.
PROTOBUF_LIMIT = 2**31 - 64 * 2**20


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, bytes | None]:
    """The valid model in the file `path`, with the file's bytes when they hold all of it.

    The bytes (None when weights stay in external files, or the file is not binary protobuf)
    let callers check, infer and size the model without serialising it again: on a 5 MB
    model each serialisation costs as much as the checker. Loading refuses external data
    outside the model's folder; anything that is not a readable, valid model is an
    InputError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    if not path.is_file():
        raise InputError("not a file", path=str(path))
    if path.stat().st_size == 0:
        raise InputError("empty file, not an ONNX model", path=str(path))
    # onnx.load_model's choice of format: by extension (.txtpb, .json…), else binary protobuf.
    format_name = onnx.serialization.registry.get_format_from_file_extension(path.suffix) or "protobuf"
    try:
        data = path.read_bytes()
        model = onnx.serialization.registry.get(format_name).deserialize_proto(data, onnx.ModelProto())
    except (DecodeError, RuntimeError, ValueError, OSError) as error:
        raise InputError(f"not an ONNX model: {first_line(error)}", path=str(path)) from error
    _require_model_shape(model, str(path))
    _require_utf8_strings(model, str(path))
    if load_confined_external_data(model, path.parent, str(path)) or format_name != "protobuf" or len(data) >= PROTOBUF_LIMIT:
        data = None  # the model in memory is no longer (or never was) these bytes
    skeleton = skeleton_of(model)  # the checker reads no weight's values: spare it copies of them
    check_model(skeleton.model, path=str(path), data=data if skeleton.model is model else None)
    return model, data


def load_model(path: str | os.PathLike, *, infer_shapes: bool = True) -> onnx.ModelProto:
    """Loads an ONNX model file (see `read_model`), shape-inferred unless `infer_shapes=False`."""
    model, data = read_model(path)
    return infer_model_shapes(model, data=data) if infer_shapes else model


def wire_bytes(model: onnx.ModelProto) -> bytes | None:
    """`model` serialised, or None when protobuf cannot hold it (`PROTOBUF_LIMIT`)."""
    try:
        data = model.SerializeToString()
    except EncodeError:  # what upb raises at 2 GiB
        return None
    return data if len(data) < PROTOBUF_LIMIT else None


def infer_model_shapes(model: onnx.ModelProto, *, data: bytes | None = None) -> onnx.ModelProto:
    """Runs ONNX shape inference once; a model it cannot infer is kept as it is.

    `data`: `model` already serialised, which spares serialising it again.
    """
    return inferred_with_size(model, data=data)[0]


def inferred_with_size(
    model: onnx.ModelProto, *, data: bytes | None = None, value_info: bool = True
) -> tuple[onnx.ModelProto, int | None]:
    """(`infer_model_shapes(model)`, its serialised size or None), the size read off the
    inference's own bytes, without the main graph's value_info when `value_info` is false.

    Inference runs on the model's skeleton (`graphopt.weightless`) when it has large weights:
    on a model with 92 MB of them, inferring it whole took 0.28 s, nearly all of it copies.
    """
    skeleton = skeleton_of(model)
    if skeleton.model is not model:
        data = wire_bytes(skeleton.model)
    elif data is None:
        data = wire_bytes(model)
    if data is None:
        logger.info("model is over 2 GiB in memory; skipping in-memory shape inference")
        return model, None
    try:
        inferred = c_shape_inference.infer_shapes(data, False, False, True)  # check_type, strict_mode, data_prop
    except Exception as error:  # onnx raises several unrelated types here
        logger.warning("shape inference failed, going on without it: %s", first_line(error))
        return model, stored_size(data, model, value_info=value_info, graph_delta=skeleton.graph_delta)
    result = onnx.load_model_from_string(inferred)
    if skeleton.model is not model:
        result = skeleton.restored(result, copy_model(model))  # `model` itself stays as given
    return result, stored_size(inferred, result, value_info=value_info, graph_delta=skeleton.graph_delta)


def check_model(model: onnx.ModelProto, *, path: str | None = None, full: bool = False, data: bytes | None = None) -> None:
    """Runs the ONNX checker; raises InputError with its first line. `data`: `model` serialised."""
    try:
        if data is None and uses_external_data(model):
            if serialized_too_big(model):
                return  # checked by path after writing; the checker cannot take it in memory
            model = checkable_copy(model)
            if model is None:
                return  # external tensors in bodies or Constant nodes: checked by path after writing
            data = model.SerializeToString()
        data = data if data is not None else wire_bytes(model)
        if data is None:
            return  # checked by path after writing; the checker cannot take it in memory
        onnx.checker.check_model(data, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError) as error:
        raise InputError(f"invalid model: {first_line(error)}", path=path) from error


def inferred_and_checked(model: onnx.ModelProto, *, value_info: bool = True) -> tuple[onnx.ModelProto, int | None]:
    """(`infer_model_shapes(model)`, its stored size or None), having checked `model` as `check_model(full=True)` does.

    A full check is the structural check plus strict, type-checking shape inference. Run that
    inference with data propagation and its result is the shapes too: one inference per pass
    output where inferring, then checking, ran two. Both run on the model's skeleton
    (`graphopt.weightless`), so its weights are not copied through them. The size comes from
    the same bytes, without the main graph's value_info when `value_info` is false (as
    `summary.model_bytes`); it is None when no bytes were at hand (external data, 2 GiB).
    Raises InputError if `model` is invalid. `model` may be modified: the result can be it,
    its weights never copied.
    """
    skeleton = None if uses_external_data(model) else skeleton_of(model)
    data = wire_bytes(skeleton.model) if skeleton is not None else None
    if data is not None:
        try:
            inferred = _strict_inference(data)
            onnx.checker.check_model(inferred)
            result = skeleton.restored(onnx.load_model_from_string(inferred), model)
            return result, stored_size(inferred, result, value_info=value_info, graph_delta=skeleton.graph_delta)
        except Exception:  # noqa: BLE001 - invalid, or only data propagation tripped: the slow path tells which
            pass
    data = data if skeleton is None or skeleton.model is model else None
    check_model(model, full=True, data=data)
    return infer_model_shapes(model, data=data), None


def _strict_inference(data: bytes) -> bytes:
    return c_shape_inference.infer_shapes(data, True, True, True)  # check_type, strict_mode, data_prop


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool = False,
    source: str | os.PathLike | None = None,
) -> Path:
    """Writes `model` atomically, with external data beside it when asked or when over 2 GiB.

    `source` is the input file, which is never overwritten. The model is checked with
    `full_check=True` before anything is renamed into place.
    """
    path = Path(path)
    if source is not None and same_file(path, Path(source)):
        raise UsageError("output would overwrite the input; choose another -o", path=str(path))
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError("output folder does not exist", path=str(path))
    if path.is_dir():
        raise UsageError("output path is a folder", path=str(path))
    external_data = external_data or uses_external_data(model) or serialized_too_big(model)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        data_name = f"{path.name}.data"
        for target in (path, folder / data_name) if external_data else (path,):
            if source is not None and is_external_file_of(target, Path(source)):
                raise UsageError(f"{target.name} would overwrite the input's external data; choose another -o", path=str(path))
        if external_data:
            write_with_external_data(model, staged, data_name)
        else:
            onnx.save_model(model, str(staged))
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
            raise InputError(f"refusing to write an invalid model: {first_line(error)}", path=str(path)) from error
        if external_data and (Path(staging) / data_name).exists():
            os.replace(Path(staging) / data_name, folder / data_name)
        os.replace(staged, path)
    return path


def serialized_too_big(model: onnx.ModelProto) -> bool:
    """Whether `model`, as held in memory, is too big for protobuf to serialise."""
    try:
        return model.ByteSize() >= PROTOBUF_LIMIT
    except Exception:  # noqa: BLE001 - protobuf refuses to size a message over 2 GiB
        return True


def _require_model_shape(model: onnx.ModelProto, path: str) -> None:
    # A TensorProto or random bytes can parse as a ModelProto with unknown fields; what makes
    # it a model is a graph and an opset.
    if not model.HasField("graph") or not model.opset_import:
        raise InputError("not an ONNX model: it has no graph or no opset_import", path=path)


def _require_utf8_strings(message, path: str) -> None:
    # ONNX is proto2: protobuf parses invalid UTF-8 in string fields and hands it back as bytes,
    # which the checker and onnx-graphsurgeon then trip over far from the cause.
    fields = _tensor_text_fields(message) if isinstance(message, onnx.TensorProto) else message.ListFields()
    for field, value in fields:
        if field.type == field.TYPE_STRING:
            for item in (value,) if isinstance(value, (str, bytes)) else value:
                if not isinstance(item, str):
                    raise InputError(f"not an ONNX model: field '{field.name}' is not valid UTF-8", path=path)
        elif field.type == field.TYPE_MESSAGE:
            for item in (value,) if isinstance(value, Message) else value:
                _require_utf8_strings(item, path)


# (field, kind) for the fields of a TensorProto that hold text or messages.
_TENSOR_TEXT_FIELDS = [(field, kind) for field, kind in field_kinds(onnx.TensorProto)
                       if field.type in (field.TYPE_STRING, field.TYPE_MESSAGE)]


def _tensor_text_fields(tensor: onnx.TensorProto) -> list:
    """The set fields of `tensor` that hold text: `ListFields` would copy its raw data out too."""
    return [(field, getattr(tensor, field.name)) for field, kind in _TENSOR_TEXT_FIELDS
            if (len(getattr(tensor, field.name)) if kind == "repeated" else tensor.HasField(field.name))]
