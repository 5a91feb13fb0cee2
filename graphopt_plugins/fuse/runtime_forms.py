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

from graphopt_plugins.fuse._formula import AnyOf, Const, Op, Var, match
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fused_form_ending_at"]

_D, _V, _X, _A = Var("d"), Var("v"), Var("x"), Var("a")
NORMALISED = AnyOf(Op("Div", _D, Op("Sqrt", _V)), Op("Mul", _D, Op("Reciprocal", Op("Sqrt", _V))))  # d / √v
SCALED_NORMALISED = Op("Mul", NORMALISED, Const())  # (d / √v) * γ
GELU_PRODUCT = AnyOf(Op("Mul", _X, Op("Add", Op("Erf", _A), Const(1.0))),  # x * (1 + Erf(…))
                     Op("Mul", _X, Op("Add", Op("Tanh", _A), Const(1.0))))  # x * (1 + Tanh(…))
HARDSWISH_PRODUCT = AnyOf(Op("Mul", _X, Op("Clip", _A, Const(), Const())), Op("Mul", _X, Op("HardSigmoid", _A)))


def fused_form_ending_at(x: gs.Tensor, op: str, ctx: FuseContext) -> str | None:
    """The form `x` ends, when a constant applied to `x` by an `op` node is part of it, else None.

    - a normalisation `d / Sqrt(v)` (LayerNorm, RMSNorm) or its `* γ`: the γ and β after it;
    - a decomposed GELU `x * (1 + Erf|Tanh(…))`: the `* 0.5` after it;
    - a decomposed HardSwish `x * Clip(x + 3, 0, 6)` at opset ≥ 14 (the hardswish rule fuses
      it; below 14 it rewrites it into `x * HardSigmoid(x)`, which onnxruntime fuses into the
      Conv before it).
    """
    if match(NORMALISED, x, ctx, owned_inside=False):
        return "a normalisation's output, whose γ/β belong to LayerNormalization"
    if match(SCALED_NORMALISED, x, ctx, owned_inside=False):
        return "a normalisation's γ, which belongs to LayerNormalization with its β"
    if op not in ("Mul", "Div"):  # an activation ends in a scale
        return None
    if match(GELU_PRODUCT, x, ctx, owned_inside=False):
        return "a decomposed GELU"
    if ctx.opset >= 14 and match(HARDSWISH_PRODUCT, x, ctx, owned_inside=False):
        return "a decomposed HardSwish"
    return None
