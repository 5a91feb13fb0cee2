"""Constant nodes as weights, so that a cut never carries them.

An exporter may put every Constant node first in the node order (paddle2onnx does, for all of
PP-OCRv4 det's BatchNorm parameters): a cut then finds them "made before it and read after
it", and carries dozens of tiny tensors from stage to stage as activations. That costs every
hop one more array per constant, and worse, the receiving stage sees a BatchNorm whose
parameters are graph inputs, which onnxruntime cannot fold into the Conv before it. As
initializers they are weights: each stage holds the ones its nodes read.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["constants_as_initializers"]

_LISTS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose top-level Constant nodes are initializers (the model itself if it
    has none). Left as nodes: a Constant that is a graph output, and sparse or string values."""
    outputs = {value.name for value in model.graph.output}
    kept, moved = [], []
    for node in model.graph.node:
        tensor = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            tensor = _value(node)
        if tensor is None:
            kept.append(node)
        else:
            moved.append(tensor)
    if not moved:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(kept)
    result.graph.initializer.extend(moved)
    return result


def _value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    if attribute.name == "value" and attribute.t.data_type != onnx.TensorProto.STRING:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = node.output[0]
        return tensor
    if attribute.name in _LISTS:
        value = onnx.helper.get_attribute_value(attribute)
        return numpy_helper.from_array(np.asarray(value, dtype=_LISTS[attribute.name]), node.output[0])
    return None
