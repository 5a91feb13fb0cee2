"""Reading and writing ONNX files safely.

Loading refuses external data outside the model's own folder (a crafted model must not make
graphopt read `/etc/shadow`); writing is atomic: a temporary file in the target folder, checked,
then renamed over the target. Weights that stay in files are `graphopt.external_data`'s job.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, Message

from graphopt.errors import InputError, UsageError, first_line
from graphopt.external_data import (external_folder, is_external_file_of, load_confined_external_data, same_file,
                                     write_with_external_data)
from graphopt.model import check_model, checked_input
from graphopt.output_annotations import repaired_output_shapes
from graphopt.proto_walk import PROTOBUF_LIMIT, field_kinds, serialized_bytes, serialized_too_big

__all__ = ["read_model", "load_model", "save_model"]

logger = logging.getLogger(__name__)


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, bytes | None]:
    """The model in the file `path`, not yet checked, with the file's bytes when they hold all of it
    (so callers check, size and run it without serialising it again: on a 5 MB model that costs as
    much as the checker). Anything that is not a readable model is an InputError naming the file.
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
    return model, data


def load_model(path: str | os.PathLike, *, infer_shapes: bool = True) -> onnx.ModelProto:
    """The checked model in the file `path` (see `read_model`), shape-inferred unless `infer_shapes=False`;
    output shapes repaired as `output_annotations.repaired_output_shapes` does, with a warning."""
    model, data = read_model(path)
    model, warnings = repaired_output_shapes(model)  # each logged as a warning
    if warnings and data is not None:
        data = serialized_bytes(model)
    if infer_shapes:
        return checked_input(model, path=str(path), data=data)
    check_model(model, path=str(path))
    return model


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool = False,
               source: str | os.PathLike | None = None) -> Path:
    """Writes `model` atomically, checked with `full_check=True` before anything is renamed into
    place, with external data beside it when asked or when over 2 GiB; never over `source`."""
    path = Path(path)
    if source is not None and same_file(path, Path(source)):
        raise UsageError("output would overwrite the input; choose another -o", path=str(path))
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError("output folder does not exist", path=str(path))
    if path.is_dir():
        raise UsageError("output path is a folder", path=str(path))
    external_data = external_data or external_folder(model) is not None or serialized_too_big(model)
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
