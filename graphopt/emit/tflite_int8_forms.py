"""Rewrites the ONNX model handed to onnx2tf's int8 writer into forms it can quantize, exactly.

onnx2tf 2.6.9's strict full-integer writer (`flatbuffer_direct`) accepts a fixed list of TFLite
ops (`tflite_builder/quantization.py`, `_STRICT_FULL_INTEGER_SUPPORTED_OPS`). ONNX
`HardSigmoid(x; alpha, beta)` becomes MUL, ADD and `RELU_0_TO_1`, which is not on that list, so
every MobileNetV3-style model (PP-OCR's HardSwish written as `x * HardSigmoid(x)` below opset
14, its squeeze-excite gates) is refused. `clip(y, 0, 1) = clip(6y, 0, 6) / 6`, so the same
function is `Mul(Clip(Add(Mul(x, 6 alpha), 6 beta), 0, 6), 1/6)`: MUL, ADD, RELU6, MUL, all of
which it quantizes. Equal in exact arithmetic; in float32 within a rounding of the float form.

Only the copy given to onnx2tf is rewritten; the optimized ONNX and its verification are not.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["int8_friendly"]


def int8_friendly(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of `model` with the main graph's HardSigmoids written as RELU6 arithmetic; what was rewritten."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    taken = {name for node in graph.node for name in list(node.input) + list(node.output)}
    taken |= {t.name for t in graph.initializer} | {v.name for v in graph.input}
    nodes, rewritten = [], 0
    for node in graph.node:
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
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return copy, ({"HardSigmoid": rewritten} if rewritten else {})


def _fresh(base: str, taken: set[str]) -> str:
    name, count = base, 1
    while any(f"{name}_{suffix}" in taken for suffix in ("scale", "scaled", "shifted", "clipped")):
        name, count = f"{base}{count}", count + 1
    taken.update(f"{name}_{suffix}" for suffix in ("scale", "shift", "low", "high", "sixth", "scaled", "shifted", "clipped"))
    return name
