"""HardSwish written out (`x*Clip(x+3,0,6)/6`, its Relu6/Min/Max variants, `x*HardSigmoid(x)`) → HardSwish."""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from graphopt_plugins.fuse._pattern import (
    FLOAT_16_32,
    drop,
    emit,
    has_dtype,
    is_close,
    scalar,
    scaled_product,
    sole_reader,
    split_scalar,
)
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_hardswish"]

RULE = "hardswish"


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
        if node.op == "Add" and node.outputs:
            split = split_scalar(node)
            if split is None or split[1] != 3.0:
                continue
            x = split[0]
            clamp = _relu6(node.outputs[0], ctx)
            if isinstance(clamp, str):
                ctx.near_miss(RULE, node, clamp)
                continue
            found = scaled_product(clamp[0], x, 1.0 / 6.0, ctx)
            matched = [node] + clamp[1]
        elif node.op == "HardSigmoid" and node.outputs and ctx.opset >= 14:
            alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
            if not is_close(alpha, 1.0 / 6.0, 1e-6) or not is_close(beta, 0.5, 1e-6):
                ctx.near_miss(RULE, node, f"HardSigmoid has alpha={alpha:g}, beta={beta:g}, not 1/6 and 0.5")
                continue
            x = node.inputs[0]
            found = scaled_product(node.outputs[0], x, 1.0, ctx, max_steps=1)
            matched = [node]
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
            gate = ctx.variable("hard_sigmoid", dtype=x.dtype, shape=x.shape)
            graph.nodes.append(gs.Node("HardSigmoid", ctx.fresh_name("HardSigmoid"), {"alpha": 1.0 / 6.0, "beta": 0.5},
                                       inputs=[x], outputs=[gate]))
            emit(ctx, "Mul", [x, gate], output)
        drop(matched + tail)
        rewritten += 1
    return rewritten


def _relu6(tensor: gs.Tensor, ctx: FuseContext) -> tuple[gs.Tensor, list[gs.Node]] | str:
    """Follows owned Clip/Relu/Max/Min nodes from `tensor`; (the clamped tensor, nodes) if they clamp to [0, 6]."""
    low, high, nodes = -math.inf, math.inf, []
    current = tensor
    while len(nodes) < 2:
        node = sole_reader(current, ctx)
        if node is None:
            return f"'{current.name}' has other readers"
        if node.op == "Relu":
            low = max(low, 0.0)
        elif node.op == "Clip":
            bounds = _clip_bounds(node)
            if bounds is None:
                return f"Clip '{node.name}' has bounds that are not constants"
            low, high = max(low, bounds[0]), min(high, bounds[1])
        elif node.op in ("Max", "Min") and len(node.inputs) == 2:
            split = split_scalar(node)
            if split is None:
                return f"{node.op} '{node.name}' does not compare with a scalar constant"
            low, high = (max(low, split[1]), high) if node.op == "Max" else (low, min(high, split[1]))
        else:
            break
        nodes.append(node)
        current = node.outputs[0]
        if low == 0.0 and high == 6.0:
            return current, nodes
    return "x + 3 is not clamped to [0, 6]"


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    if "min" in node.attrs or "max" in node.attrs:  # Clip before opset 11
        return float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))
    bounds = []
    for index, default in ((1, -math.inf), (2, math.inf)):
        if len(node.inputs) <= index or node.inputs[index].name == "":
            bounds.append(default)
            continue
        value = scalar(node.inputs[index])
        if value is None:
            return None
        bounds.append(value)
    return bounds[0], bounds[1]
