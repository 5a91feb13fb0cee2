"""What a model says about the sizes of its inputs, where its interface leaves them open.

`verify.input_shapes` chooses a concrete shape per dim; these are the facts it reads: how far
the model downsamples an image input (sides must be multiples of it), the sizes the exporter
wrote in metadata, the constant target of a Reshape the input flows into, and the value_info
of the tensor it passes into unchanged.
"""

from __future__ import annotations

import json

import onnx

from graphopt.verify.feeds import InputSpec

__all__ = ["total_stride", "axis_strides", "metadata_sizes", "reshape_target", "value_info_dims"]

_IMAGE_SIZE_KEYS = ("imgsz", "image_size", "img_size", "input_size", "imagesize")
_STRIDED_OPS = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool", "ConvTranspose"}
_PASS_THROUGH = {"Cast", "Identity"}


def total_stride(model: onnx.ModelProto, input_name: str) -> int:
    """The largest spatial downsampling any tensor reached from `input_name` (product of the
    strides of Conv/pooling on the way); sides must be multiples of it for Resize/Concat to align."""
    return max(axis_strides(model, input_name))


def axis_strides(model: onnx.ModelProto, input_name: str) -> tuple[int, int]:
    """(height, width) downsampling reached from `input_name`, each the largest along any path (a
    text recognizer's (2, 1) strides end at height 1: its height is best the height stride itself)."""
    stride = {input_name: (1, 1)}
    largest = (1, 1)
    for node in model.graph.node:
        reached = [stride[name] for name in node.input if name in stride]
        if not reached:
            continue
        factor = (1, 1)
        if node.op_type in _STRIDED_OPS and node.op_type != "ConvTranspose":
            ints = next((list(attr.ints) for attr in node.attribute if attr.name == "strides" and attr.ints), [1])
            factor = (ints[0], ints[-1]) if len(ints) >= 2 else (ints[0], ints[0])
        value = (max(r[0] for r in reached) * factor[0], max(r[1] for r in reached) * factor[1])
        largest = (max(largest[0], value[0]), max(largest[1], value[1]))
        for name in node.output:
            stride[name] = value
    return largest


def metadata_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Integer sizes the exporter wrote in metadata_props: a key named like a symbol, or an image size."""
    found = {}
    for entry in model.metadata_props:
        key, text = entry.key.strip(), entry.value.strip()
        try:
            value = json.loads(text.replace("(", "[").replace(")", "]"))
        except ValueError:
            continue
        sizes = value if isinstance(value, list) else [value]
        if not sizes or not all(isinstance(v, int) and v > 0 for v in sizes):
            continue
        if key.lower() in _IMAGE_SIZE_KEYS:
            found["image side"] = max(sizes)
        elif len(sizes) == 1:
            found[key] = sizes[0]
    return found


def reshape_target(model: onnx.ModelProto, spec: InputSpec) -> list[int] | None:
    """The constant target of a Reshape the input reaches through Cast/Identity, if of the same rank."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t
    current = {spec.name}
    for node in model.graph.node:
        if not node.input or node.input[0] not in current:
            continue
        if node.op_type in _PASS_THROUGH:
            current.update(node.output)
        elif node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            target = onnx.numpy_helper.to_array(constants[node.input[1]]).astype(int).ravel().tolist()
            return target if len(target) == len(spec.dims) else None
    return None


def value_info_dims(model: onnx.ModelProto, spec: InputSpec) -> list[int | None] | None:
    """Fixed dims an exporter wrote in value_info for the tensor the input passes unchanged into
    (through Cast/Identity): sizes the model states even where its interface leaves them open."""
    path, current = [], spec.name
    for node in model.graph.node:
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] == current and node.output:
            current = node.output[0]
            path.append(current)
    values = {v.name: v for v in model.graph.value_info if v.name in path} if path else {}
    for current in path:
        value = values.get(current)
        if value is not None and value.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in value.type.tensor_type.shape.dim]
            if len(dims) == len(spec.dims) and any(d is not None for d in dims):
                return dims
    return None
