"""The precision a model computes in, which bounds how closely a lossless rewrite can agree with it.

A model kept in float16 (weights and activations half, outputs cast back to float32) computes
every op in half precision: a fused LayerNorm, which onnxruntime evaluates in float32 inside,
then differs from the op-by-op chain by a float16 ulp or two, far above float32's tolerance,
though nothing was lost. So a float output's lossless tolerance is the loosest of its own
dtype's and those of the float types the reference model holds anywhere (weights, Casts,
declared tensors).
"""

from __future__ import annotations

import onnx

from graphopt.proto_walk import iter_graph_protos, iter_tensors
from graphopt.verify.metrics import Tolerance, tolerance_for

__all__ = ["float_types", "lossless_floor", "looser"]

_FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


def float_types(model: onnx.ModelProto) -> set[int]:
    """The ONNX float element types `model` stores or computes in, in any of its graphs."""
    found = {tensor.data_type for tensor in iter_tensors(model)}
    for graph in iter_graph_protos(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            found.add(value.type.tensor_type.elem_type)
        found.update(attribute.i for node in graph.node if node.op_type == "Cast"
                     for attribute in node.attribute if attribute.name == "to")
    return found & _FLOATS


def lossless_floor(model: onnx.ModelProto) -> Tolerance | None:
    """The loosest lossless tolerance among the float types `model` holds; None if it holds none."""
    tolerances = [tolerance_for(onnx.helper.tensor_dtype_to_np_dtype(kind)) for kind in float_types(model)]
    return max(tolerances, key=lambda tolerance: (tolerance.rtol, tolerance.atol), default=None)


def looser(tolerance: Tolerance, floor: Tolerance | None) -> Tolerance:
    """Each bound the larger of the two."""
    if floor is None:
        return tolerance
    return Tolerance(rtol=max(tolerance.rtol, floor.rtol), atol=max(tolerance.atol, floor.atol))
