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
from google.protobuf.message import DecodeError, Message

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
from graphopt.proto_walk import copy_model, initializer_nbytes, iter_graph_protos, iter_tensors, tensor_nbytes

# The walkers and external-data helpers are re-exported: callers knew them from here first.
__all__ = [
    "PROTOBUF_LIMIT",
    "EXTERNAL_DIR_KEY",
    "INLINE_EXTERNAL_BYTES",
    "external_data_dir",
    "uses_external_data",
    "materialize_external_data",
    "serialized_too_big",
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


def load_model(path: str | os.PathLike, *, infer_shapes: bool = True) -> onnx.ModelProto:
    """Loads an ONNX model file, its external data confined to the model's folder.

    Raises InputError, naming the file, for anything that is not a readable, valid model.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    if not path.is_file():
        raise InputError("not a file", path=str(path))
    if path.stat().st_size == 0:
        raise InputError("empty file, not an ONNX model", path=str(path))
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as error:
        raise InputError(f"not an ONNX model: {first_line(error)}", path=str(path)) from error
    _require_model_shape(model, str(path))
    _require_utf8_strings(model, str(path))
    load_confined_external_data(model, path.parent, str(path))
    check_model(model, path=str(path))
    if infer_shapes:
        model = infer_model_shapes(model)
    return model


def infer_model_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Runs ONNX shape inference once; a model it cannot infer is kept as it is."""
    if serialized_too_big(model):
        logger.info("model is over 2 GiB in memory; skipping in-memory shape inference")
        return model
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:  # onnx raises several unrelated types here
        logger.warning("shape inference failed, going on without it: %s", first_line(error))
        return model


def check_model(model: onnx.ModelProto, *, path: str | None = None, full: bool = False) -> None:
    """Runs the ONNX checker; raises InputError with its first line."""
    try:
        if serialized_too_big(model):
            return  # checked by path after writing; the checker cannot take it in memory
        if uses_external_data(model):
            model = checkable_copy(model)
            if model is None:
                return  # external tensors in bodies or Constant nodes: checked by path after writing
        onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError) as error:
        raise InputError(f"invalid model: {first_line(error)}", path=path) from error


def inferred_and_checked(model: onnx.ModelProto) -> onnx.ModelProto:
    """`infer_model_shapes(model)`, having checked it as `check_model(full=True)` does; InputError if invalid.

    A full check is the structural check plus strict, type-checking shape inference. Run that
    inference with data propagation and its result is the shapes too: one inference per pass
    output where inferring, then checking, ran two.
    """
    if not serialized_too_big(model) and not uses_external_data(model):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
            onnx.checker.check_model(inferred)
            return inferred
        except Exception:  # noqa: BLE001 - invalid, or only data propagation tripped: the slow path tells which
            pass
    check_model(model, full=True)
    return infer_model_shapes(model)


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
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            for item in (value,) if isinstance(value, (str, bytes)) else value:
                if not isinstance(item, str):
                    raise InputError(f"not an ONNX model: field '{field.name}' is not valid UTF-8", path=path)
        elif field.type == field.TYPE_MESSAGE:
            for item in (value,) if isinstance(value, Message) else value:
                _require_utf8_strings(item, path)
