"""Weights that stay outside the ModelProto: the input's data files, and graphopt's spill file.

A model loaded from disk keeps its large tensors in their files (a 2.5 GiB model must not cost
2.5 GiB per copy); loading checks that every location stays inside the model's folder and makes
it absolute, so the proto itself says where its bytes are (nothing about the run goes into
`metadata_props`). Tensors under `INLINE_EXTERNAL_BYTES` are read in, for shape inference.
Weights a pass *creates* in such a model would otherwise be copied by every export and session:
for the length of a run (`spill_folder`) they are appended to a scratch file and referred to by
absolute path; `materialize_external_data` reads them back before the run returns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from graphopt.errors import InputError, first_line
from graphopt.proto_walk import copy_model, iter_tensors, tensor_nbytes

__all__ = ["INLINE_EXTERNAL_BYTES", "external_folder", "spill_folder", "spill_array", "external_file", "read_external",
           "materialize_external_data", "write_with_external_data", "load_confined_external_data",
           "is_external_file_of", "same_file"]

# External tensors smaller than this are read into memory at load (shape tensors, biases).
INLINE_EXTERNAL_BYTES = 64 * 2**10
# Offsets in written data files are page-aligned, so onnxruntime can memory-map each tensor.
_ALIGNMENT = 4096
_SPILL_FILE = "spilled.data"


def external_folder(model: onnx.ModelProto) -> Path | None:
    """The folder of the input's data files the model still reads weights from, if any."""
    for tensor in iter_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:  # external_data_helper's test, without a call per tensor
            return Path(external_data_helper.ExternalDataInfo(tensor).location).parent
    return None


@contextlib.contextmanager
def spill_folder(model: onnx.ModelProto) -> Iterator[Path | None]:
    """A scratch folder, deleted on leaving, for the new large weights of a run over `model`; None
    when `model` holds its weights in memory (it has nothing to gain)."""
    if external_folder(model) is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="graphopt-spill-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def spill_array(array: np.ndarray, name: str, data_type: int, folder: Path) -> onnx.TensorProto:
    """Appends `array` to the spill file in `folder`; returns a TensorProto referring to it."""
    file = folder / _SPILL_FILE
    with open(file, "ab") as data:  # append mode ignores seeks: pad to the alignment by hand
        end = data.tell()
        offset = -(-end // _ALIGNMENT) * _ALIGNMENT
        data.write(bytes(offset - end))
        data.write(np.ascontiguousarray(array).data)
    tensor = onnx.TensorProto(name=name, data_type=data_type, dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", str(file)), ("offset", str(offset)), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def external_file(tensor: onnx.TensorProto, folder: Path | None = None) -> Path:
    """The file an external tensor's bytes are in: its absolute location, or `folder`/location."""
    location = external_data_helper.ExternalDataInfo(tensor).location
    if os.path.isabs(location):
        return Path(location)  # loading makes every checked location absolute; the spill file is
    if folder is None:
        raise InputError(f"tensor '{tensor.name}' refers to external data whose folder is unknown")
    return folder / location


def read_external(tensor: onnx.TensorProto, folder: Path | None = None) -> np.ndarray:
    """An external tensor's values, memory-mapped read-only."""
    info = external_data_helper.ExternalDataInfo(tensor)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(tensor.dims)
    if 0 in shape:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(external_file(tensor, folder), dtype=dtype, mode="r", offset=int(info.offset or 0), shape=shape)


def write_with_external_data(model: onnx.ModelProto, path: str | os.PathLike, data_name: str, *, size_threshold: int = 1024) -> None:
    """Writes `model` (unchanged) to `path`, every tensor of `size_threshold` bytes or more in `data_name` beside it.

    Tensors still in the input's data files are copied in chunks, never whole into memory. Not
    `onnx.save_model(save_as_external_data=True)`: it refuses when `data_name` exists in the
    *current directory*; the caller makes sure it does not exist in `path`'s folder.
    """
    model = copy_model(model)  # weights still on disk are references here: the copy is small
    path = Path(path)
    with open(path.with_name(data_name), "wb") as data:
        # Every tensor, not only initializers: exporters keep weights in Constant nodes and functions.
        for tensor in iter_tensors(model):
            if external_data_helper.uses_external_data(tensor):
                info = external_data_helper.ExternalDataInfo(tensor)
                length = int(info.length) if info.length else tensor_nbytes(tensor)
                offset = _append(data, _chunks(external_file(tensor), int(info.offset or 0), length))
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
                raise InputError("external data file ended early", path=str(file))
            length -= len(chunk)
            yield chunk


def materialize_external_data(model: onnx.ModelProto, *, only_in: Path | None = None) -> None:
    """Reads `model`'s external tensors into it, in place: all, or with `only_in` those in that
    folder (the spill folder, so the model outlives it while big weights stay in the input's files)."""
    for tensor in iter_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        if only_in is not None and external_file(tensor).parent != only_in:
            continue
        tensor.raw_data = read_external(tensor).tobytes()
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def load_confined_external_data(model: onnx.ModelProto, folder: Path, path: str) -> bool:
    """Reads the small external tensors in, leaves the big ones where they are (by absolute path); whether there were any."""
    external = [t for t in iter_tensors(model) if external_data_helper.uses_external_data(t)]
    if not external:
        return False
    root = folder.resolve()
    for tensor in external:
        _check_external_location(tensor, root, path)
    for tensor in external:
        if tensor_nbytes(tensor) < INLINE_EXTERNAL_BYTES:
            external_data_helper.load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
        else:
            location = next(entry for entry in tensor.external_data if entry.key == "location")
            location.value = str((root / location.value).resolve())
    return True


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


def is_external_file_of(candidate: Path, source: Path) -> bool:
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
