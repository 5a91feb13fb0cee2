"""The partition's manifest (`manifest.json`) and the atomic writing of a stage folder.

The manifest is what a runner needs and what a person checks: the stage files, each stage's
inputs and outputs with dtype and (possibly dynamic) shape, where each stage input comes
from (a model input, or an output of the stage before), which stage output is which model
output, and the cost and crossing bytes of each stage. `schema` is versioned; readers refuse
a schema they do not know.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from graphopt.documents import read_document
from graphopt.errors import InputError, UsageError

__all__ = ["MANIFEST_SCHEMA", "MANIFEST_NAME", "stage_file", "describe_values", "load_manifest", "write_partition", "check_output_dir"]

MANIFEST_SCHEMA = "graphopt.partition/1"
MANIFEST_NAME = "manifest.json"


def stage_file(index: int) -> str:
    return f"stage_{index}.onnx"


def describe_values(values) -> list[dict]:
    """`[{name, dtype, shape}]` of ValueInfoProtos; a dynamic dim is its name, or null if unnamed."""
    described = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else None
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim] \
            if tensor.HasField("shape") else None
        described.append({"name": value.name, "dtype": dtype, "shape": shape})
    return described


def load_manifest(manifest: str | os.PathLike | dict) -> tuple[dict, Path | None]:
    """(the manifest dict, the folder its stage files are in) from a path (file or folder) or a dict."""
    if isinstance(manifest, dict):
        folder = manifest.get("folder")
        document = manifest
    else:
        path = Path(manifest)
        if path.is_dir():
            path = path / MANIFEST_NAME
        document = read_document(path, json.loads, missing="no partition manifest here", unreadable="manifest is not readable JSON",
                                 invalid=json.JSONDecodeError)
        folder = path.parent
    if not isinstance(document, dict) or document.get("schema") != MANIFEST_SCHEMA:
        raise InputError(f"not a {MANIFEST_SCHEMA} manifest (schema {document.get('schema') if isinstance(document, dict) else None!r})",
                         path=None if isinstance(manifest, dict) else str(manifest))
    return document, Path(folder) if folder is not None else None


def check_output_dir(folder: Path, source: Path | None = None) -> None:
    """Refuses early, before any work, a folder the partition could not be written into."""
    parent = folder.parent if str(folder.parent) else Path(".")
    if source is not None and folder.exists() and source.exists() and folder.resolve() == source.resolve():
        raise UsageError("-o names the input model; give a folder for the stages", path=str(folder))
    if folder.exists() and not folder.is_dir():
        raise UsageError("-o must be a folder (it is a file)", path=str(folder))
    target = folder if folder.is_dir() else parent
    if not target.is_dir():
        raise UsageError("output folder's parent does not exist", path=str(folder))
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError("output folder is not writable", path=str(folder))
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST_NAME).is_file():
        raise UsageError("output folder is not empty and holds no earlier partition; choose another -o", path=str(folder))


def write_partition(folder: str | os.PathLike, stages: list[onnx.ModelProto], manifest: dict) -> Path:
    """Writes the stages and manifest.json into `folder`, all or nothing; returns the manifest path.

    Everything is written into a temporary folder first; a new `folder` is that folder renamed,
    an earlier partition's files are replaced one by one (the manifest last) and its stage files
    the new manifest no longer names are removed.
    """
    folder = Path(folder)
    check_output_dir(folder)
    parent = folder if folder.is_dir() else (folder.parent if str(folder.parent) else Path("."))
    scratch = Path(tempfile.mkdtemp(prefix=".graphopt-partition-", dir=parent))
    try:
        for index, stage in enumerate(stages):
            onnx.save_model(stage, scratch / stage_file(index))
        (scratch / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(scratch, 0o777 & ~umask)
        if not folder.exists():
            os.replace(scratch, folder)
            return folder / MANIFEST_NAME
        for index in range(len(stages)):
            os.replace(scratch / stage_file(index), folder / stage_file(index))
        os.replace(scratch / MANIFEST_NAME, folder / MANIFEST_NAME)
        for stale in folder.glob("stage_*.onnx"):
            if stale.name not in {stage_file(i) for i in range(len(stages))}:
                stale.unlink()
        return folder / MANIFEST_NAME
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
