"""GELU, written out in its erf or tanh form, → one Gelu node (standard at opset 20, else contrib)."""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from graphopt_plugins.fuse._formula import AnyOf, Const, Op, Var, match
from graphopt_plugins.fuse._pattern import FLOAT_16_32, drop, emit, has_dtype, scaled_product, sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_gelu"]

RULE = "gelu"
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715

# The gates `1 + Erf(…)` / `1 + Tanh(…)`; the rule then follows `x * gate * 0.5` in any order.
X = Var("x")
ERF_GATE = Op("Add", Op("Erf", AnyOf(Op("Div", X, Const(_SQRT_2)), Op("Mul", X, Const(1.0 / _SQRT_2)))), Const(1.0))
CUBE = AnyOf(Op("Pow", X, Const(3.0)), Op("Mul", X, Op("Mul", X, X)))  # x³
SQUARE_TERM = AnyOf(Op("Mul", Op("Mul", X, Const(_CUBIC)), X), Op("Mul", Const(_CUBIC), Op("Mul", X, X)))  # 0.044715·x²
TANH_GATE = Op("Add", Op("Tanh", AnyOf(
    Op("Mul", Op("Add", X, Op("Mul", CUBE, Const(_CUBIC))), Const(_SQRT_2_OVER_PI)),  # √(2/π)·(x + 0.044715·x³)
    Op("Mul", Op("Mul", X, Const(_SQRT_2_OVER_PI)), Op("Add", SQUARE_TERM, Const(1.0))),  # (x·√(2/π))·(1 + 0.044715·x²)
)), Const(1.0))


def fuse_gelu(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `0.5*x*(1+Erf(x/√2))` as Gelu(x) and `0.5*x*(1+Tanh(√(2/π)*(x+0.044715*x³)))` as Gelu<tanh>(x).

    Fires for every order of the final products the torch exporters write (`(x*a)*0.5`,
    `x*(0.5*a)`, `(0.5*x)*a`, `(x*a)/2`), `x/√2` or `x*(1/√2)`, and `x³` as `Pow(x, 3)`,
    `x*(x*x)` or `(x*x)*x`. Emits the standard `Gelu` (approximate "none"/"tanh") at opset
    ≥ 20; below that, under `target=onnxruntime`, com.microsoft `Gelu` (erf) or `FastGelu`
    (tanh); otherwise the pattern stays. Must not fire when an intermediate tensor has other
    readers or is a graph output, when a constant is off (by more than 1e-4 relative), or for
    element types other than float32/float16 (onnxruntime has no other Gelu kernel).
    """
    standard = ctx.opset >= 20
    rewritten = 0
    for node in list(graph.nodes):
        if node.op not in ("Erf", "Tanh") or not node.outputs:
            continue
        plus_one = sole_reader(node.outputs[0], ctx)
        if plus_one is None or plus_one.op != "Add":
            ctx.near_miss(RULE, node, f"the {node.op} output is not read by one Add only")
            continue
        gate = match(ERF_GATE if node.op == "Erf" else TANH_GATE, plus_one.outputs[0], ctx)
        if not gate:
            ctx.near_miss(RULE, node, gate.reason)
            continue
        x = gate["x"]
        if not has_dtype(x, FLOAT_16_32):
            ctx.near_miss(RULE, node, f"onnxruntime runs Gelu on float32/float16 only, not {x.dtype}")
            continue
        product = scaled_product(plus_one.outputs[0], x, 0.5, ctx)
        if isinstance(product, str):
            ctx.near_miss(RULE, node, product)
            continue
        output, tail = product
        approximate = "none" if node.op == "Erf" else "tanh"
        if standard:
            attrs = {"approximate": "tanh"} if approximate == "tanh" else {}
            emit(ctx, "Gelu", [x], output, attrs)
        elif ctx.allows_contrib_ops:
            emit(ctx, "Gelu" if approximate == "none" else "FastGelu", [x], output, domain="com.microsoft")
        else:
            ctx.leave_unfused(RULE, node, "GELU(s) left written out for onnxruntime to fuse at load "
                                          "(or fuse.target=onnxruntime)", "Gelu", 20)
            continue
        drop(gate.nodes + tail)
        rewritten += 1
    return rewritten
