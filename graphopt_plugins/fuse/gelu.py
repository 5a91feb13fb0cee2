"""GELU, written out in its erf or tanh form, → one Gelu node (standard at opset 20, else contrib)."""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import (
    FLOAT_16_32,
    drop,
    emit,
    has_dtype,
    is_close,
    owned,
    scaled_product,
    sole_reader,
    split_scalar,
)
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_gelu"]

RULE = "gelu"
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


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
        found = _match_erf(node, ctx) if node.op == "Erf" else _match_tanh(node, ctx)
        if isinstance(found, str):
            ctx.near_miss(RULE, node, found)
            continue
        x, one_plus, inner = found
        if not has_dtype(x, FLOAT_16_32):
            ctx.near_miss(RULE, node, f"onnxruntime runs Gelu on float32/float16 only, not {x.dtype}")
            continue
        product = scaled_product(one_plus.outputs[0], x, 0.5, ctx)
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
            ctx.near_miss(RULE, node, f"Gelu needs opset 20 (model has {ctx.opset}) or fuse.target=onnxruntime")
            continue
        drop(inner + [node, one_plus] + tail)
        rewritten += 1
    return rewritten


def _plus_one(node: gs.Node, ctx: FuseContext) -> gs.Node | str:
    add = sole_reader(node.outputs[0], ctx)
    if add is None or add.op != "Add":
        return f"the {node.op} output is not read by one Add only"
    split = split_scalar(add)
    if split is None or not is_close(split[1], 1.0):
        return f"the {node.op} output is not added to 1"
    return add


def _match_erf(erf: gs.Node, ctx: FuseContext) -> tuple[gs.Tensor, gs.Node, list[gs.Node]] | str:
    scale = graph_queries.producer(erf.inputs[0])
    if scale is None or scale.op not in ("Div", "Mul") or not owned(erf.inputs[0], ctx):
        return "the Erf input is not an owned x/√2 or x*(1/√2)"
    split = split_scalar(scale)
    expected = _SQRT_2 if scale.op == "Div" else 1.0 / _SQRT_2
    if split is None or not is_close(split[1], expected) or (scale.op == "Div" and scale.inputs[0] is not split[0]):
        return "the Erf input is not x/√2 or x*(1/√2)"
    add = _plus_one(erf, ctx)
    return add if isinstance(add, str) else (split[0], add, [scale])


def _match_tanh(tanh: gs.Node, ctx: FuseContext) -> tuple[gs.Tensor, gs.Node, list[gs.Node]] | str:
    scale = graph_queries.producer(tanh.inputs[0])
    if scale is None or scale.op != "Mul" or not owned(tanh.inputs[0], ctx):
        return "the Tanh input is not an owned product"
    split = split_scalar(scale)
    if split is None:
        return _match_factored_tanh(tanh, scale, ctx)
    if not is_close(split[1], _SQRT_2_OVER_PI):
        return "the Tanh input is not √(2/π) times something"
    inner = graph_queries.producer(split[0])
    if inner is None or inner.op != "Add" or len(inner.inputs) != 2 or not owned(split[0], ctx):
        return "the Tanh argument is not an owned x + 0.044715*x³"
    for x, cubic in (inner.inputs, reversed(inner.inputs)):
        nodes = _cubic_term(cubic, x, ctx)
        if nodes is not None:
            add = _plus_one(tanh, ctx)
            return add if isinstance(add, str) else (x, add, [scale, inner] + nodes)
    return "the Tanh argument is not x + 0.044715*x³"


def _match_factored_tanh(tanh: gs.Node, scale: gs.Node, ctx: FuseContext):
    """The factored tanh argument `(x*√(2/π)) * (1 + 0.044715*x*x)` (Hugging Face's FastGELU)."""
    for left, right in (scale.inputs, reversed(scale.inputs)):
        scaled_x, one_plus = graph_queries.producer(left), graph_queries.producer(right)
        if scaled_x is None or one_plus is None or scaled_x.op != "Mul" or one_plus.op != "Add":
            continue
        x_split, one_split = split_scalar(scaled_x), split_scalar(one_plus)
        if x_split is None or one_split is None or not owned(left, ctx) or not owned(right, ctx):
            continue
        x = x_split[0]
        if not is_close(x_split[1], _SQRT_2_OVER_PI) or not is_close(one_split[1], 1.0):
            continue
        nodes = _quadratic_term(one_split[0], x, ctx)
        if nodes is not None:
            add = _plus_one(tanh, ctx)
            return add if isinstance(add, str) else (x, add, [scale, scaled_x, one_plus] + nodes)
    return "the Tanh argument is neither √(2/π)*(x + 0.044715*x³) nor (x*√(2/π))*(1 + 0.044715*x²)"


def _quadratic_term(tensor: gs.Tensor, x: gs.Tensor, ctx: FuseContext) -> list[gs.Node] | None:
    """The nodes of an owned `0.044715*x*x` as `(c*x)*x`, `x*(x*c)` or `c*(x*x)`, else None."""
    outer = graph_queries.producer(tensor)
    if outer is None or outer.op != "Mul" or len(outer.inputs) != 2 or not owned(tensor, ctx):
        return None
    split = split_scalar(outer)
    if split is not None:  # c * (x*x)
        square = graph_queries.producer(split[0])
        ok = (is_close(split[1], _CUBIC) and square is not None and square.op == "Mul" and owned(split[0], ctx)
              and len(square.inputs) == 2 and all(t is x for t in square.inputs))
        return [outer, square] if ok else None
    for first, second in (outer.inputs, reversed(outer.inputs)):
        inner = graph_queries.producer(second)
        inner_split = None if inner is None or inner.op != "Mul" else split_scalar(inner)
        if (first is x and inner_split is not None and inner_split[0] is x and is_close(inner_split[1], _CUBIC)
                and owned(second, ctx)):
            return [outer, inner]
    return None


def _cubic_term(tensor: gs.Tensor, x: gs.Tensor, ctx: FuseContext) -> list[gs.Node] | None:
    """The nodes of an owned `0.044715 * x³` (x³ as Pow(x, 3), x*(x*x) or (x*x)*x), else None."""
    mul = graph_queries.producer(tensor)
    if mul is None or mul.op != "Mul" or not owned(tensor, ctx):
        return None
    split = split_scalar(mul)
    if split is None or not is_close(split[1], _CUBIC) or not owned(split[0], ctx):
        return None
    cube = graph_queries.producer(split[0])
    if cube is None:
        return None
    if cube.op == "Pow":
        exponent = split_scalar(cube)
        return [mul, cube] if cube.inputs[0] is x and exponent is not None and exponent[1] == 3.0 else None
    if cube.op != "Mul" or len(cube.inputs) != 2:
        return None
    for first, second in (cube.inputs, reversed(cube.inputs)):
        square = graph_queries.producer(second)
        if (first is x and square is not None and square.op == "Mul" and owned(second, ctx)
                and len(square.inputs) == 2 and all(t is x for t in square.inputs)):
            return [mul, cube, square]
    return None
