"""HardSwish written out (`x*Clip(x+3,0,6)/6`, its Relu6/Min/Max variants, `x*HardSigmoid(x)`) → HardSwish."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt_plugins.fuse._formula import AnyOf, Const, Op, Var, match
from graphopt_plugins.fuse._pattern import FLOAT_16_32, drop, emit, has_dtype, scaled_product, sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_hardswish"]

RULE = "hardswish"

X = Var("x")
SHIFTED = Op("Add", X, Const(3.0))
RELU6 = AnyOf(  # relu6(x + 3); the rule then follows `x * relu6 / 6` in any order
    Op("Clip", SHIFTED, Const(0.0), Const(6.0)),
    Op("Clip", SHIFTED, attrs={"min": 0.0, "max": 6.0}),  # Clip's bounds before opset 11
    Op("Min", Op("Max", SHIFTED, Const(0.0)), Const(6.0)),
    Op("Max", Op("Min", SHIFTED, Const(6.0)), Const(0.0)),
    Op("Min", Op("Relu", SHIFTED), Const(6.0)),
)
HARD_SIGMOID_SWISH = Op("Mul", X, Op("HardSigmoid", X, attrs={"alpha": 1.0 / 6.0, "beta": 0.5}))  # x * HardSigmoid(x)


def fuse_hardswish(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `x * relu6(x + 3) / 6` and `x * HardSigmoid<α=1/6, β=0.5>(x)` as HardSwish(x) (opset ≥ 14).

    Below opset 14 (HardSwish does not exist yet) `x * relu6(x + 3) / 6` becomes the two-node
    `x * HardSigmoid<α=1/6, β=0.5>(x)` instead (HardSigmoid is in every opset from 6), which
    stays as it is until the model is at 14.

    relu6 may be `Clip(·, 0, 6)`, `Min(Max(·, 0), 6)`, `Max(Min(·, 6), 0)` or `Min(Relu(·), 6)`;
    the `x` and `1/6` factors may come in any order (`(x*r)/6`, `x*(r/6)`, `(x*r)*(1/6)`, …).
    Must not fire when an intermediate tensor has other readers or is a graph output, when the
    bounds are not exactly 0 and 6 (or α, β not 1/6, 0.5), or when the HardSigmoid reads
    something other than the `x` it multiplies, or for element types other than float32/float16
    (onnxruntime has no other HardSwish kernel).
    """
    rewritten = 0
    for node in list(graph.nodes):
        if node.op in ("Clip", "Min", "Max") and node.outputs:
            gate = match(RELU6, node.outputs[0], ctx)
            if not gate:
                continue  # most clamps are not a HardSwish's: no near miss for them
            x = gate["x"]
            found = scaled_product(node.outputs[0], x, 1.0 / 6.0, ctx)
        elif node.op == "HardSigmoid" and node.outputs and ctx.opset >= 14:
            product = sole_reader(node.outputs[0], ctx)
            gate = match(HARD_SIGMOID_SWISH, product.outputs[0], ctx) if product is not None else None
            if not gate:
                ctx.near_miss(RULE, node, gate.reason if gate is not None else "the HardSigmoid has other readers")
                continue
            x = gate["x"]
            found = (product.outputs[0], [])
        else:
            continue
        if isinstance(found, str):
            ctx.near_miss(RULE, node, found)
            continue
        if not has_dtype(x, FLOAT_16_32):
            ctx.near_miss(RULE, node, f"onnxruntime runs HardSwish on float32/float16 only, not {x.dtype}")
            continue
        output, tail = found
        if ctx.opset >= 14:
            emit(ctx, "HardSwish", [x], output)
        else:
            ctx.leave_unfused(RULE, node, "HardSwish(es) written as x*HardSigmoid(x)", "HardSwish", 14)
            gate_output = ctx.variable("hard_sigmoid", dtype=x.dtype, shape=x.shape)
            graph.nodes.append(gs.Node("HardSigmoid", ctx.fresh_name("HardSigmoid"), {"alpha": 1.0 / 6.0, "beta": 0.5},
                                       inputs=[x], outputs=[gate_output]))
            emit(ctx, "Mul", [x, gate_output], output)
        drop(gate.nodes + tail)
        rewritten += 1
    return rewritten
