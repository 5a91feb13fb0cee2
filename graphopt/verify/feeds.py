"""Model inputs for verification: read from an `.npz` file, or generated with a fixed seed.

An `.npz` holds one array per model input, shaped `(N, *input_shape)`: N samples. Generated
inputs follow the model's declared types; integer inputs stay inside the range their consumers
accept (token ids below a Gather table's size), so the model runs as in real use.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import InputError, UsageError
from graphopt.parameter_names import parameter

__all__ = ["InputSpec", "check_feeds", "input_specs", "parse_input_shape", "generate_feeds", "load_feeds", "read_npz", "split_samples"]

# Integer inputs whose range no consumer bounds are drawn from [0, _DEFAULT_INT_HIGH).
_DEFAULT_INT_HIGH = 8
# Ops that pass an integer tensor's values through unchanged, on the way to what bounds them.
_VALUE_PRESERVING = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose"}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]  # int: fixed; str: symbolic; None: unknown


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers), with dtype and dims."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise InputError(f"input '{value.name}' is not a tensor; graphopt can only feed tensors")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        # Some exporters write -1 for a dynamic dimension; it is as unknown as a missing one.
        dims = tuple(dim.dim_value if dim.HasField("dim_value") and dim.dim_value >= 0 else (dim.dim_param or None)
                     for dim in tensor_type.shape.dim)
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME=1,3,224,224` → ("NAME", (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name.strip() or not shape or any(d < 0 for d in shape):
        raise UsageError(f"{parameter('input_shapes')} expects NAME=DIM,DIM,..., got '{text}'")
    return name.strip(), shape


def generate_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None, *, seed: int = 0,
                   samples: int = 1) -> dict[str, np.ndarray]:
    """Random inputs for every model input, shaped `(samples, *shape)`, reproducible from `seed`."""
    from graphopt.verify.input_shapes import choose_input_shapes  # it reads the specs from here

    shapes = dict(shapes or {})
    specs = input_specs(model)
    _reject_unknown_names(shapes, specs, parameter("input_shapes"))
    for spec in specs:
        if spec.name in shapes:
            _check_fits(spec, shapes[spec.name])
    # Dims neither given nor fixed: the documented defaults (input_shapes.py); callers that
    # must be sure the model runs at them use `input_shapes.confirmed_shapes` first.
    chosen = choose_input_shapes(model, shapes)
    rng = np.random.default_rng(seed)
    bounds = _integer_bounds(model)
    feeds = {}
    for spec in specs:
        shape = chosen[spec.name].shape
        feeds[spec.name] = _random_array(rng, spec.dtype, (samples, *shape), bounds.get(spec.name))
    return feeds


def load_feeds(path: str | os.PathLike, model: onnx.ModelProto, *, option: str | None = None) -> dict[str, np.ndarray]:
    """Arrays from an `.npz`, checked against the model's inputs (names, per-sample shapes, dtypes)."""
    option = option or parameter("inputs")
    return check_feeds(read_npz(Path(path), option), model, option=option, path=Path(path))


def read_npz(path: Path, option: str) -> dict[str, np.ndarray]:
    """Every array of an `.npz`, by name; InputError naming `option` and the file when it cannot be read."""
    if not path.is_file():
        raise InputError(f"{option} file does not exist", path=str(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(f"{option} is not a readable .npz file: {error}", path=str(path)) from error


def check_feeds(arrays: dict[str, np.ndarray], model: onnx.ModelProto, *, option: str | None = None,
                path: Path | None = None) -> dict[str, np.ndarray]:
    """Checks `{input name: (N, *shape) array}` against the model's inputs; casts safe dtypes."""
    option = option or parameter("inputs")
    where = str(path) if path else None
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    specs = {spec.name: spec for spec in input_specs(model)}
    _reject_unknown_names(arrays, specs.values(), option, path)
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise InputError(f"{option} has no array for model input {', '.join(map(repr, missing))}", path=where)
    counts = set()
    feeds = {}
    for name, array in arrays.items():
        spec = specs[name]
        expected = ", ".join("?" if not isinstance(d, int) else str(d) for d in spec.dims)
        per_sample = array.shape[1:]
        if array.ndim != len(spec.dims) + 1 or any(isinstance(d, int) and d != got for d, got in zip(spec.dims, per_sample)):
            raise InputError(f"{option} array '{name}' has shape {tuple(array.shape)}; expected (N, {expected}) with N samples",
                             path=where)
        feeds[name] = _as_dtype(array, spec, option, path)
        counts.add(array.shape[0])
    if len(counts) > 1:
        raise InputError(f"{option} arrays disagree on the number of samples: {sorted(counts)}", path=where)
    if counts == {0}:
        raise InputError(f"{option} holds no samples", path=where)
    return feeds


def split_samples(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """`{name: (N, ...)}` → N feeds, one per sample, ready for `InferenceSession.run`."""
    count = min((array.shape[0] for array in feeds.values()), default=1)
    # `array[index, ...]`, not `array[index]`: a scalar input must stay a 0-d array for ORT.
    return [{name: array[index, ...] for name, array in feeds.items()} for index in range(count)]


def _reject_unknown_names(given, specs, option: str, path: Path | None = None) -> None:
    known = {spec.name for spec in specs}
    unknown = sorted(set(given) - known)
    if unknown:
        raise (UsageError if option == parameter("input_shapes") else InputError)(
            f"{option} names no model input: {', '.join(map(repr, unknown))} (model inputs: {', '.join(sorted(known))})",
            path=str(path) if path else None)


def _check_fits(spec: InputSpec, given: tuple[int, ...]) -> None:
    if len(given) != len(spec.dims) or any(isinstance(d, int) and d != g for d, g in zip(spec.dims, given)):
        declared = ",".join(str(d) if isinstance(d, int) else (d or "?") for d in spec.dims)
        raise UsageError(f"{parameter('input_shapes')} {spec.name}={','.join(map(str, given))} "
                         f"does not fit its declared shape [{declared}]")


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], high: int | None) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        upper = high if high is not None else _DEFAULT_INT_HIGH
        return rng.integers(0, max(upper, 1), size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype.kind == "V":
        return rng.standard_normal(size=shape).astype(np.float32).astype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return np.array(["graphopt"], dtype=object).repeat(int(np.prod(shape))).reshape(shape)
    return rng.standard_normal(size=shape).astype(dtype)


def _integer_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For integer inputs that index a constant table (Gather, GatherElements), the exclusive upper bound."""
    graph = model.graph
    sizes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    bounds = {}
    for value in graph.input:
        frontier, seen, highs = [value.name], set(), []
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in readers.get(name, ()):
                if node.op_type in _VALUE_PRESERVING and node.input[0] == name:
                    frontier.extend(node.output)
                elif node.op_type in ("Gather", "GatherElements") and node.input[1] == name and node.input[0] in sizes:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = sizes[node.input[0]]
                    if dims:
                        highs.append(dims[axis])
        if highs:
            bounds[value.name] = min(highs)
    return bounds


def _as_dtype(array: np.ndarray, spec: InputSpec, option: str, path: Path | None) -> np.ndarray:
    if array.dtype == spec.dtype:
        return array
    if np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
        return array.astype(spec.dtype)
    raise InputError(f"{option} array '{spec.name}' is {array.dtype}; the model expects {spec.dtype}",
                     path=str(path) if path else None)
