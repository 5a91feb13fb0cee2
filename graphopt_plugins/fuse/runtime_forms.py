"""Forms fused as a whole — by an activation or norm rule, or by onnxruntime as it loads the model —
whose constants the folds into weights must leave where they are.

At opset 11/12 LayerNormalization (17) and Gelu (20) do not exist, so `fuse` cannot write them;
onnxruntime still fuses the written-out forms when it loads the model (its LayerNormFusion,
SimplifiedLayerNormFusion and GeluFusion), but only as written: a LayerNorm whose γ went into
the next MatMul and whose β became `β/γ` is four ReduceMean/Pow/Sqrt/Div kernels at run time.
That made `cleanup,fuse` output of PP-OCRv4 rec (opset 12) keep 4 of its 5 LayerNorms unfused.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt_plugins.fuse._pattern import split_scalar
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fused_form_ending_at"]

_HARDSWISH_GATES = ("Clip", "HardSigmoid")  # x * Clip(x + 3, 0, 6) / 6, x * HardSigmoid(x)
_GELU_GATES = ("Erf", "Tanh")  # x * (1 + Erf(x / √2)) * 0.5, x * (1 + Tanh(…)) * 0.5


def fused_form_ending_at(x: gs.Tensor, op: str, ctx: FuseContext) -> str | None:
    """The form `x` ends, when a constant applied to `x` by an `op` node is part of it, else None.

    - a normalisation `… / Sqrt(…)` (LayerNorm, RMSNorm) or its `* γ`: the γ and β after it;
    - a decomposed GELU `x * (1 + Erf|Tanh(…))`: the `* 0.5` after it;
    - a decomposed HardSwish `x * Clip(x + 3, 0, 6)` at opset ≥ 14 (the hardswish rule fuses
      it; below 14 it rewrites it into `x * HardSigmoid(x)`, which onnxruntime fuses into the
      Conv before it).
    """
    node = ir.producer(x)
    if node is None:
        return None
    if _is_normalised(node):
        return "a normalisation's output, whose γ/β belong to LayerNormalization"
    if node.op == "Mul" and len(node.inputs) == 2:
        split = split_scalar(node)
        scaled = ir.producer(split[0]) if split is not None else None
        if scaled is None:
            for operand in node.inputs:
                constant = ir.constant_value(operand)
                other = node.inputs[1] if operand is node.inputs[0] else node.inputs[0]
                if constant is not None and ir.producer(other) is not None:
                    scaled = ir.producer(other)
        if scaled is not None and _is_normalised(scaled):
            return "a normalisation's γ, which belongs to LayerNormalization with its β"
        for operand in node.inputs if op in ("Mul", "Div") else ():  # an activation ends in a scale
            gate = ir.producer(operand)
            if gate is None:
                continue
            if gate.op in _HARDSWISH_GATES and ctx.opset >= 14:
                return "a decomposed HardSwish"
            if gate.op == "Add" and any(_op(t) in _GELU_GATES for t in gate.inputs):
                return "a decomposed GELU"
    return None


def _is_normalised(node: gs.Node) -> bool:
    """`d / Sqrt(v)` or `d * Reciprocal(Sqrt(v))`."""
    if node.op == "Div" and len(node.inputs) == 2:
        return _op(node.inputs[1]) == "Sqrt"
    if node.op == "Mul" and len(node.inputs) == 2:
        for operand in node.inputs:
            reciprocal = ir.producer(operand)
            if reciprocal is not None and reciprocal.op == "Reciprocal" and _op(reciprocal.inputs[0]) == "Sqrt":
                return True
    return False


def _op(tensor: gs.Tensor) -> str | None:
    node = ir.producer(tensor)
    return None if node is None else node.op
