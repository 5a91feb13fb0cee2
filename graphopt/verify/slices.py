"""Slices of an output that hold different quantities, each judged on its own.

A cosine over a whole tensor weighs each element by its magnitude. A YOLO-style detector's
output (B, 4+C, N) concatenates decoded boxes in pixels (hundreds, fixed largely by the anchor
grid) with sigmoid class scores (0–1): the whole-output cosine stays at 0.9994 while the score
slice falls to 0.53. So a budget also holds on each slice of such an output.

Slices are declared (`--budget-slices output0@1=0:4,4:`: output name, `@AXIS` (default −1),
then comma-separated `start:stop` ranges on that axis, numpy style) or detected: an output
produced by a Concat (through Transposes, and through a Concat along another axis of
identically split parts, as multi-level heads do) is sliced at its parts. They are reported
under `verification.outputs` as `NAME@AXIS[START:STOP]`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx

from graphopt.errors import UsageError

__all__ = ["OutputSlice", "parse_slices", "detect_slices", "output_slices", "slice_key"]


@dataclasses.dataclass(frozen=True)
class OutputSlice:
    output: str
    axis: int
    start: int | None
    stop: int | None

    def key(self) -> str:
        return slice_key(self.output, self.axis, self.start, self.stop)

    def take(self, array):
        """This slice of one sample's output (no sample axis), or None when the axis is missing."""
        if array is None or getattr(array, "ndim", 0) == 0 or not -array.ndim <= self.axis < array.ndim:
            return None
        index = [slice(None)] * array.ndim
        index[self.axis] = slice(self.start, self.stop)
        return array[tuple(index)]


def slice_key(output: str, axis: int, start: int | None, stop: int | None) -> str:
    return f"{output}@{axis}[{'' if start is None else start}:{'' if stop is None else stop}]"


def parse_slices(specs: list[str] | str | None) -> tuple[OutputSlice, ...]:
    """`["output0@1=0:4,4:"]` → slices; raises UsageError naming a malformed spec."""
    if not specs:
        return ()
    specs = [specs] if isinstance(specs, str) else specs
    found = []
    for spec in specs:
        match = re.fullmatch(r"\s*([^=@]+?)\s*(?:@\s*(-?\d+))?\s*=\s*(.+)", spec)
        if not match:
            raise UsageError(f"--budget-slices expects NAME[@AXIS]=START:STOP[,START:STOP...]; got '{spec}'")
        name, axis, ranges = match.group(1), int(match.group(2) or -1), match.group(3)
        for part in ranges.split(","):
            bounds = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", part)
            if not bounds:
                raise UsageError(f"--budget-slices range must be START:STOP (either may be empty); got '{part}' in '{spec}'")
            start, stop = (int(value) if value else None for value in bounds.groups())
            found.append(OutputSlice(name, axis, start, stop))
    return tuple(found)


def output_slices(model: onnx.ModelProto, declared, feeds: dict | None) -> tuple[OutputSlice, ...]:
    """The declared slices (`parse_slices` specs), else those detected at the shapes of `feeds`'
    first sample; an output with declared slices keeps only those."""
    chosen = parse_slices(declared)
    shapes = {name: tuple(np.shape(array)[1:]) for name, array in (feeds or {}).items()}
    named = {part.output for part in chosen}
    known = {value.name for value in model.graph.output}
    unknown = sorted(named - known)
    if unknown:
        raise UsageError(f"--budget-slices names '{unknown[0]}', which is not an output of the model "
                         f"({', '.join(sorted(known))})")
    return chosen + tuple(part for part in detect_slices(model, shapes or None) if part.output not in named)


def detect_slices(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[OutputSlice, ...]:
    """The parts of each graph output built by a Concat of separately computed quantities.

    `input_shapes` (one sample's, e.g. the verifier's) fix dynamic inputs so that part sizes
    computed through Shape ops are known; without them only static sizes are seen."""
    if input_shapes:
        model = _with_static_inputs(model, input_shapes)
    producers = {output: node for node in model.graph.node for output in node.output}
    shapes = _static_dims(model)
    found = []
    for value in model.graph.output:
        split = _split_of(value.name, producers, shapes, depth=0)
        if split is None:
            continue
        axis, sizes = split
        rank = len(shapes.get(value.name, ())) or None
        if rank is not None and axis >= 0:
            axis -= rank  # count from the end: the sample axis the verifier strips is at the front
        start = 0
        for size in sizes:
            found.append(OutputSlice(value.name, axis, start, start + size))
            start += size
    return tuple(found)


def _split_of(name: str, producers: dict, shapes: dict, depth: int) -> tuple[int, list[int]] | None:
    """(axis, part sizes) of the Concat that built `name`, seen through Transposes; None if none."""
    node = producers.get(name)
    if node is None or depth > 8:
        return None
    if node.op_type == "Transpose":
        inner = _split_of(node.input[0], producers, shapes, depth + 1)
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if inner is None or perm is None:
            return None
        axis = inner[0] % len(perm)
        return perm.index(axis), inner[1]
    if node.op_type != "Concat" or len(node.input) < 2:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    rank = len(shapes.get(name, ()))
    if rank:
        axis %= rank
    inner = [_split_of(part, producers, shapes, depth + 1) for part in node.input]
    if inner[0] is not None and all(split == inner[0] for split in inner) and inner[0][0] != axis:
        return inner[0]  # levels of a multi-scale head, each split the same way on another axis
    sizes = [shapes.get(part, (None,) * (axis + 1))[axis] if len(shapes.get(part, ())) > axis else None
             for part in node.input]
    if any(size is None for size in sizes) or len(set(sizes)) == 1 and len(sizes) > 2:
        return None  # unknown sizes, or many equal parts: a batch of alike things, not different quantities
    return axis, sizes


def _with_static_inputs(model: onnx.ModelProto, input_shapes: dict) -> onnx.ModelProto:
    """`model` (checked already) with its inputs fixed at `input_shapes` and shape-inferred, each
    large weight a dims-only stand-in that is no input here: no weight is copied, nor checked again."""
    from graphopt.convert import stand_in_weights

    static, moved = stand_in_weights(model, value_info=False, constants=True)
    if static is model:
        static = onnx.ModelProto()
        static.CopyFrom(model)
        del static.graph.value_info[:]
    for value in static.graph.input:
        if value.name in input_shapes and value.type.HasField("tensor_type"):
            for dim, size in zip(value.type.tensor_type.shape.dim, input_shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(static, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # detection is a convenience: a model inference cannot fix keeps its own shapes
        return model
    declared = {value.name for value in model.graph.input}
    inputs = [value for value in inferred.graph.input if value.name not in moved or value.name in declared]
    del inferred.graph.input[:]
    inferred.graph.input.extend(inputs)
    return inferred


def _static_dims(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    dims = {}
    for value in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)
    return dims
