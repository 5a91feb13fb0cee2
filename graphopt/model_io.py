"""Reading and writing ONNX files safely.

Loading refuses external data that would be read from outside the model's own folder (a
crafted model must not make graphopt read `/etc/shadow` or a neighbour's file), and writing
is atomic: a temporary file in the target folder, checked, then renamed over the target.

External data is not read into memory (a 2.5 GiB model must not cost 2.5 GiB per copy):
large tensors keep pointing at their files, and the model's folder is recorded in its
`metadata_props` under `EXTERNAL_DIR_KEY`. onnxruntime reads them from there
(`verify.runner.make_session`), graphsurgeon memory-maps them (`ir.import_graph`), the checker
sees them as graph inputs (`check_model`), and `save_model` streams them into the output's
data file. Tensors under `INLINE_EXTERNAL_BYTES` are read in, so shape inference can use them.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper

from graphopt.errors import InputError, UsageError, first_line

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
# Where the external data of a model loaded from disk lives (absolute folder); removed on save.
EXTERNAL_DIR_KEY = "graphopt.external_data_dir"
# External tensors smaller than this are read into memory at load (shape tensors, biases).
INLINE_EXTERNAL_BYTES = 64 * 2**10
# Offsets in written data files are page-aligned, so onnxruntime can memory-map each tensor.
_ALIGNMENT = 4096


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
    _load_confined_external_data(model, path.parent, str(path))
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
            model = _checkable_copy(model)
            if model is None:
                return  # external tensors in bodies or Constant nodes: checked by path after writing
        onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError) as error:
        raise InputError(f"invalid model: {first_line(error)}", path=path) from error


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
            if source is not None and _is_external_file_of(target, Path(source)):
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


def write_with_external_data(model: onnx.ModelProto, path: str | os.PathLike, data_name: str, *, size_threshold: int = 1024) -> None:
    """Writes `model` to `path` with every tensor of `size_threshold` bytes or more in `data_name` beside it.

    `model` is not modified. Tensors still in the input's external data files are copied from
    there in chunks, never whole into memory; offsets are page-aligned. Unlike
    `onnx.save_model(save_as_external_data=True)`, which refuses when a file named `data_name`
    exists in the *current directory*, this only looks at `path`'s folder; the caller makes
    sure `data_name` does not exist there yet.
    """
    source_dir = external_data_dir(model)
    model = copy_model(model)  # weights still on disk are references here: the copy is small
    _drop_external_dir(model)
    path = Path(path)
    with open(path.with_name(data_name), "wb") as data:
        # Every tensor, not only initializers: exporters keep weights in Constant nodes and functions.
        for tensor in iter_tensors(model):
            if external_data_helper.uses_external_data(tensor):
                if source_dir is None:
                    raise InputError(f"tensor '{tensor.name}' refers to external data whose folder is unknown")
                info = external_data_helper.ExternalDataInfo(tensor)
                length = int(info.length) if info.length else tensor_nbytes(tensor)
                offset = _append(data, _chunks(source_dir / info.location, int(info.offset or 0), length))
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= size_threshold:
                raw = tensor.raw_data
                length = len(raw)
                offset = _append(data, iter((raw,)))
                del raw
                tensor.ClearField("raw_data")
            else:
                continue
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())


def _append(data, chunks) -> int:
    offset = -(-data.tell() // _ALIGNMENT) * _ALIGNMENT
    data.seek(offset)
    for chunk in chunks:
        data.write(chunk)
    return offset


def _chunks(file: Path, offset: int, length: int, size: int = 64 * 2**20):
    with open(file, "rb") as source:
        source.seek(offset)
        while length > 0:
            chunk = source.read(min(size, length))
            if not chunk:
                raise InputError(f"external data file ended early", path=str(file))
            length -= len(chunk)
            yield chunk


def external_data_dir(model: onnx.ModelProto) -> Path | None:
    """The folder the model's unloaded external data is read from (set by `load_model`)."""
    for entry in model.metadata_props:
        if entry.key == EXTERNAL_DIR_KEY:
            return Path(entry.value)
    return None


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether some tensor of `model` still refers to an external data file."""
    return any(external_data_helper.uses_external_data(t) for t in iter_tensors(model))


def serialized_too_big(model: onnx.ModelProto) -> bool:
    """Whether `model`, as held in memory, is too big for protobuf to serialise."""
    try:
        return model.ByteSize() >= PROTOBUF_LIMIT
    except Exception:  # noqa: BLE001 - protobuf refuses to size a message over 2 GiB
        return True


def materialize_external_data(model: onnx.ModelProto) -> None:
    """Reads every external tensor of `model` into memory, in place (for models under 2 GiB)."""
    folder = external_data_dir(model)
    if folder is not None:
        external_data_helper.load_external_data_for_model(model, str(folder))
    _drop_external_dir(model)


def _drop_external_dir(model: onnx.ModelProto) -> None:
    kept = [entry for entry in model.metadata_props if entry.key != EXTERNAL_DIR_KEY]
    if len(kept) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(kept)


def _checkable_copy(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy the in-memory checker can take: external initializers become graph inputs.

    The checker looks for an external file relative to the *current directory* (and refuses
    absolute paths), so in memory it cannot check a model whose data sits beside its file.
    Those files were checked at load (`_check_external_location`); the structure is what is
    left to check. None if external tensors sit where they cannot become inputs.
    """
    copy = copy_model(model)
    inputs = {value.name for value in copy.graph.input}
    kept = []
    for tensor in copy.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            if tensor.name not in inputs:
                copy.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            kept.append(tensor)
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    if uses_external_data(copy):
        return None
    return copy


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


def _load_confined_external_data(model: onnx.ModelProto, folder: Path, path: str) -> None:
    external = [t for t in iter_tensors(model) if external_data_helper.uses_external_data(t)]
    if not external:
        return
    root = folder.resolve()
    for tensor in external:
        _check_external_location(tensor, root, path)
    for tensor in external:
        if tensor_nbytes(tensor) < INLINE_EXTERNAL_BYTES:
            external_data_helper.load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    if any(external_data_helper.uses_external_data(tensor) for tensor in external):
        entry = model.metadata_props.add()
        entry.key, entry.value = EXTERNAL_DIR_KEY, str(root)


def _check_external_location(tensor: onnx.TensorProto, root: Path, path: str) -> None:
    try:
        info = external_data_helper.ExternalDataInfo(tensor)
    except ValueError as error:  # offset or length that is not a non-negative integer
        raise InputError(f"external data of tensor '{tensor.name}' is malformed: {first_line(error)}", path=path) from error
    location = info.location
    refuse = f"external data of tensor '{tensor.name}' at '{location}'"
    if not location:
        raise InputError(f"{refuse} names no file", path=path)
    if "\x00" in location:
        raise InputError(f"{refuse} is not a valid file name", path=path)
    if os.path.isabs(location) or Path(location).drive:
        raise InputError(f"{refuse} is an absolute path; only files inside the model's folder are read", path=path)
    if ".." in Path(location).parts:
        raise InputError(f"{refuse} leaves the model's folder ('..')", path=path)
    target = root / location
    resolved = target.resolve()
    if not resolved.is_relative_to(root):
        raise InputError(f"{refuse} is a link that leaves the model's folder", path=path)
    if not resolved.is_file():
        raise InputError(f"{refuse} does not exist", path=path)
    stat = resolved.stat()
    if stat.st_nlink > 1:
        # A hard link cannot be told apart from its other names: it may be a file outside.
        raise InputError(f"{refuse} is a file with several hard links; refusing to read it", path=path)
    offset = int(info.offset or 0)
    length = int(info.length) if info.length else stat.st_size - offset
    needed = max(length, tensor_nbytes(tensor) if not info.length else length)
    if offset < 0 or length < 0 or offset + needed > stat.st_size:
        raise InputError(
            f"{refuse} asks for bytes {offset}..{offset + needed} of a {stat.st_size}-byte file",
            path=path,
        )


def _is_external_file_of(candidate: Path, source: Path) -> bool:
    """Whether `candidate` is one of the external data files the model at `source` reads."""
    if not candidate.exists() or not source.is_file():
        return False
    try:
        model = onnx.load_model(str(source), load_external_data=False)
    except Exception:  # noqa: BLE001 - the source was read before; if it cannot be now, nothing to protect
        return False
    for tensor in iter_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if location and same_file(candidate, source.parent / location):
                return True
    return False


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (same path after resolving links, or the same inode)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
