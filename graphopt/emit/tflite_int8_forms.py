"""Rewrites the ONNX model handed to onnx2tf's int8 writer into forms it can quantize, exactly.

onnx2tf 2.6.9's strict full-integer writer (`flatbuffer_direct`) accepts a fixed list of TFLite
ops (`tflite_builder/quantization.py`, `_STRICT_FULL_INTEGER_SUPPORTED_OPS`). ONNX
`HardSigmoid(x; alpha, beta)` becomes MUL, ADD and `RELU_0_TO_1`, which is not on that list, so
every MobileNetV3-style model (PP-OCR's HardSwish written as `x * HardSigmoid(x)` below opset
14, its squeeze-excite gates) is refused. `clip(y, 0, 1) = clip(6y, 0, 6) / 6`, so the same
function is `Mul(Clip(Add(Mul(x, 6 alpha), 6 beta), 0, 6), 1/6)`: MUL, ADD, RELU6, MUL, all of
which it quantizes. Equal in exact arithmetic; in float32 within a rounding of the float form.

`GlobalAveragePool` (every squeeze-excite block) becomes MEAN, which the writer counts among the
ops whose input must share its output's quantization: it gives the input the mean's range, far
narrower than the input's own (PP-OCR cls: [0, 1.45] for a tensor reaching 7.96), and every other
reader of that tensor sees it clipped (cls at cosine 0.76, det at 0.00). Written as a
FULLY_CONNECTED over the flattened (N·C, H·W) input with a (1, H·W) weight of 1/(H·W), the mean
gets its own output range and its input keeps its own. (A MatMul becomes BATCH_MATMUL, whose
per-channel weight the writer quantizes along the wrong axis; a depthwise Conv works but stores
C·H·W weights.) Only rewritten where shape inference gives the input's four dims. A Flatten
that alone reads the mean is folded into the rewrite's last Reshape: onnx2tf 2.6.9 folds a
Reshape followed by a Flatten into one Reshape of the wrong shape (the torch CNN's head).

Only the copy given to onnx2tf is rewritten; the optimized ONNX and its verification are not.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["int8_friendly"]


def int8_friendly(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of `model` with the main graph's HardSigmoids written as RELU6 arithmetic and its
    GlobalAveragePools as FULLY_CONNECTED means; how many of each were rewritten."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    taken = {name for node in graph.node for name in list(node.input) + list(node.output)}
    taken |= {t.name for t in graph.initializer} | {v.name for v in graph.input}
    shapes = _static_shapes(copy)
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    folded: set[int] = set()  # Flattens that a rewritten mean writes itself
    nodes, rewritten = [], {}
    for node in graph.node:
        if id(node) in folded:
            continue
        if node.op_type == "GlobalAveragePool" and node.domain in ("", "ai.onnx") and len(shapes.get(node.input[0], ())) == 4:
            flatten = _only_flatten_after(node, graph, readers)
            if flatten is not None:
                folded.add(id(flatten))
            nodes += _mean_as_gemm(node, shapes[node.input[0]], graph, taken, flatten)
            rewritten["GlobalAveragePool"] = rewritten.get("GlobalAveragePool", 0) + 1
            continue
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        name = _fresh(node.output[0] + "_relu6", taken)
        constants = {"scale": 6 * alpha, "shift": 6 * beta, "low": 0.0, "high": 6.0, "sixth": 1 / 6}
        for key, value in constants.items():
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), f"{name}_{key}"))
        nodes += [helper.make_node("Mul", [node.input[0], f"{name}_scale"], [f"{name}_scaled"], name=f"{name}_mul"),
                  helper.make_node("Add", [f"{name}_scaled", f"{name}_shift"], [f"{name}_shifted"], name=f"{name}_add"),
                  helper.make_node("Clip", [f"{name}_shifted", f"{name}_low", f"{name}_high"], [f"{name}_clipped"], name=f"{name}_clip"),
                  helper.make_node("Mul", [f"{name}_clipped", f"{name}_sixth"], [node.output[0]], name=node.name or f"{name}_out")]
        rewritten["HardSigmoid"] = rewritten.get("HardSigmoid", 0) + 1
    del graph.node[:]
    graph.node.extend(nodes)
    return copy, rewritten


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The main graph's tensor shapes where every dim is known."""
    inferred = onnx.shape_inference.infer_shapes(model)
    found = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            found[value.name] = tuple(d.dim_value for d in dims)
    return found


def _only_flatten_after(node: onnx.NodeProto, graph: onnx.GraphProto, readers: dict) -> onnx.NodeProto | None:
    """The Flatten (axis 1) that alone reads `node`'s output, which is no graph output; else None."""
    after = readers.get(node.output[0], [])
    if len(after) != 1 or after[0].op_type != "Flatten" or node.output[0] in {v.name for v in graph.output}:
        return None
    axis = next((helper.get_attribute_value(a) for a in after[0].attribute if a.name == "axis"), 1)
    return after[0] if axis == 1 else None


def _mean_as_gemm(node: onnx.NodeProto, shape: tuple[int, ...], graph: onnx.GraphProto, taken: set[str],
                  flatten: onnx.NodeProto | None = None) -> list[onnx.NodeProto]:
    """`GlobalAveragePool(x)` of an (N, C, H, W) `x` as `Reshape(Gemm(Reshape(x, (N·C, H·W)), w, transB), (N, C, 1, 1))`,
    `w` a (1, H·W) row of 1/(H·W): a FULLY_CONNECTED with one output channel, whose int8 weight is exact."""
    n, c, h, w = shape
    name = _fresh(node.output[0] + "_mean", taken)
    graph.initializer.extend([numpy_helper.from_array(np.array([n * c, h * w], np.int64), f"{name}_flat_shape"),
                              numpy_helper.from_array(np.full((1, h * w), 1.0 / (h * w), np.float32), f"{name}_weights"),
                              numpy_helper.from_array(np.array([n, c] if flatten else [n, c, 1, 1], np.int64), f"{name}_pooled_shape")])
    # Flatten after it: written by the last Reshape (onnx2tf 2.6.9 folds Reshape → Flatten into a wrong shape)
    output = flatten.output[0] if flatten is not None else node.output[0]
    return [helper.make_node("Reshape", [node.input[0], f"{name}_flat_shape"], [f"{name}_flat"], name=f"{name}_flatten"),
            helper.make_node("Gemm", [f"{name}_flat", f"{name}_weights"], [f"{name}_sum"], name=f"{name}_fc", transB=1),
            helper.make_node("Reshape", [f"{name}_sum", f"{name}_pooled_shape"], [output], name=node.name or f"{name}_out")]


def _fresh(base: str, taken: set[str]) -> str:
    name, count = base, 1
    suffixes = ("scale", "shift", "low", "high", "sixth", "scaled", "shifted", "clipped",
                "flat_shape", "weights", "pooled_shape", "flat", "sum")
    while any(f"{name}_{suffix}" in taken for suffix in suffixes):
        name, count = f"{base}{count}", count + 1
    taken.update(f"{name}_{suffix}" for suffix in suffixes)
    return name

