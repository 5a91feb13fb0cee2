"""Calibration data the way users keep it: folders of `.npy`/`.npz` samples or images, or any iterable.

Read one sample at a time up to `MAX_SAMPLES` (no pass calibrates on more), so a folder of 10,000
images costs the memory of the first few, into the `{input name: (N, *input_shape)}` form of
`--calibration .npz`. A folder holds `.npy` files (one input), `.npz` files (one array per input)
or images (one image input, through `Preprocessing`: the recipe's `[calibration]` table); the API
also takes any iterable of `{input name: array}`. A missing leading batch axis of 1 is added.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import InputError

__all__ = ["MAX_SAMPLES", "Preprocessing", "CalibrationFolder", "folder_samples", "stack_samples"]

MAX_SAMPLES = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes an input array (the recipe's `[calibration]` table)."""

    resize: tuple[int, int] | None = None  # (height, width); default: the model input's static size
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)  # per channel, subtracted after scaling
    std: tuple[float, ...] = (1.0,)  # per channel, divided by last
    layout: str = "NCHW"  # or NHWC
    channels: str = "rgb"  # or bgr

    @classmethod
    def from_table(cls, table: Mapping | None, path: str | None = None) -> Preprocessing:
        table = dict(table or {})
        unknown = sorted(set(table) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"[calibration] has unknown keys {', '.join(unknown)} (resize, scale, mean, std, layout, channels)", path=path)
        if table.get("layout", "NCHW") not in ("NCHW", "NHWC") or table.get("channels", "rgb") not in ("rgb", "bgr"):
            raise InputError("[calibration] layout must be NCHW or NHWC and channels rgb or bgr", path=path)
        for key in ("resize", "mean", "std"):
            if key in table:
                table[key] = tuple(table[key])
        return cls(**table)

    def apply(self, image, size: tuple[int, int] | None) -> np.ndarray:
        size = self.resize or size
        image = image.convert("RGB")
        if size is not None:
            image = image.resize((int(size[1]), int(size[0])))
        array = np.asarray(image, np.float32) * np.float32(self.scale)
        if self.channels == "bgr":
            array = array[..., ::-1]
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1) if self.layout == "NCHW" else array)


@dataclasses.dataclass(frozen=True)
class CalibrationFolder:
    """A folder of samples with its image preprocessing, read once the model is known."""

    path: Path
    preprocessing: Preprocessing = Preprocessing()

    def stacked(self, model: onnx.ModelProto, limit: int = MAX_SAMPLES) -> dict[str, np.ndarray]:
        return stack_samples(folder_samples(Path(self.path), model, self.preprocessing), model, limit)


def _image_size(model: onnx.ModelProto, layout: str) -> tuple[int, int] | None:
    dims = [d.dim_value if d.HasField("dim_value") else None for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) < 3:
        return None
    height, width = (dims[-2], dims[-1]) if layout == "NCHW" else (dims[-3], dims[-2])
    return (height, width) if height and width else None


def folder_samples(folder: Path, model: onnx.ModelProto, preprocessing: Preprocessing | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One `{input: array}` per file of `folder`, in name order, read when asked for."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".npy", ".npz", *IMAGE_SUFFIXES))
    if not files:
        raise InputError("--calibration folder holds no .npy, .npz or image files", path=str(folder))
    inputs = [value.name for value in model.graph.input]
    preprocessing = preprocessing or Preprocessing()
    for path in files:
        suffix = path.suffix.lower()
        try:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    yield {name: archive[name] for name in archive.files}
                continue
            if len(inputs) != 1:
                raise InputError(f"a .npy or image sample feeds one input; the model has {len(inputs)} (use .npz files)", path=str(path))
            if suffix == ".npy":
                yield {inputs[0]: np.load(path, allow_pickle=False)}
            else:
                from PIL import Image

                with Image.open(path) as image:
                    yield {inputs[0]: preprocessing.apply(image, _image_size(model, preprocessing.layout))}
        except (OSError, ValueError) as error:
            raise InputError(f"--calibration sample is not readable: {error}", path=str(path)) from error


def stack_samples(samples: Iterable[Mapping[str, np.ndarray]], model: onnx.ModelProto, limit: int = MAX_SAMPLES) -> dict[str, np.ndarray]:
    """`{input: (N, *shape)}` from at most `limit` samples, each given a missing batch axis of 1."""
    ranks = {value.name: len(value.type.tensor_type.shape.dim) for value in model.graph.input}
    collected: dict[str, list[np.ndarray]] = {}
    for sample in itertools.islice(iter(samples), limit):
        if not isinstance(sample, Mapping):
            raise InputError(f"a calibration sample must be a {{input name: array}} dict, not {type(sample).__name__}")
        for name, value in sample.items():
            value = np.asarray(value)
            if name in ranks and value.ndim == ranks[name] - 1:
                value = value[None]
            collected.setdefault(name, []).append(value)
    if not collected:
        raise InputError("--calibration holds no samples")
    try:
        return {name: np.stack(values) for name, values in collected.items()}
    except ValueError as error:
        raise InputError(f"--calibration samples differ in shape: {error}") from error
