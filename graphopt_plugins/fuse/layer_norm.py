"""LayerNorm written out (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul γ][/Add β]) → LayerNormalization."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt_plugins.fuse._pattern import (
    FLOATS,
    has_dtype,
    drop,
    emit,
    owned,
    reduce_axes,
    same_axes,
    trailing_axes,
)
from graphopt_plugins.fuse._norm import affine_tail, norm_input, variance_of
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_layer_norm"]

RULE = "layer_norm"


def fuse_layer_norm(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) [* γ] [+ β]` as LayerNormalization.

    The division may also be written `(x - mean(x)) * Reciprocal(sqrt(…))`.

    Opset ≥ 17; below it the site is left as written (onnxruntime fuses that form when it loads
    the model, and `runtime_forms` keeps the folds off its γ/β) and counted in the pass's warnings. Both means must reduce the same trailing
    axes with keepdims (axes an attribute before opset 18, an input from 18 on); the square is
    `Pow(d, 2)` or `d*d`; `eps` a scalar constant; γ and β constants that broadcast to the
    normalised shape only (a γ varying along a leading axis would not fit Scale). Without γ the
    normalised shape must be static (Scale gets ones). Must not fire when an inner tensor has
    other readers, the axes are not the last ones, or a constant is missing.
    """
    rewritten = 0
    for div in list(graph.nodes):
        if div.op not in ("Div", "Mul") or len(div.inputs) != 2 or not div.outputs:
            continue
        site = _normalisation(div, ctx)
        if site is None:
            continue
        sub, denominator, inverse = site
        found = _match(div, sub, denominator, inverse, ctx)
        if isinstance(found, str):
            ctx.near_miss(RULE, div, found)
            continue
        x, eps, axes_count, nodes = found
        tail = affine_tail(div.outputs[0], axes_count, x, ctx)
        if isinstance(tail, str):
            ctx.near_miss(RULE, div, tail)
            continue
        if ctx.opset < 17:
            ctx.leave_unfused(RULE, div, "LayerNorm(s) left written out for onnxruntime to fuse at load",
                              "LayerNormalization", 17)
            continue
        output, gamma, beta, tail_nodes = tail
        inputs = [x, norm_input(ctx, "ln_scale", gamma, tail_nodes)]
        inputs += [norm_input(ctx, "ln_bias", beta, tail_nodes)] if beta is not None else []
        emit(ctx, "LayerNormalization", inputs, output, {"axis": -axes_count, "epsilon": float(eps)})
        drop(nodes + tail_nodes)
        rewritten += 1
    return rewritten


def _normalisation(node: gs.Node, ctx: FuseContext) -> tuple[gs.Node, gs.Tensor, list[gs.Node]] | None:
    """For `Div(x - m, s)` or `Mul(x - m, Reciprocal(s))` (either order): (the Sub, s, [the Reciprocal])."""
    if node.op == "Div":
        sub = ir.producer(node.inputs[0])
        return (sub, node.inputs[1], []) if sub is not None and sub.op == "Sub" else None
    for centred, inverse in (node.inputs, reversed(node.inputs)):
        sub, reciprocal = ir.producer(centred), ir.producer(inverse)
        if sub is not None and sub.op == "Sub" and reciprocal is not None and reciprocal.op == "Reciprocal" \
                and owned(inverse, ctx):
            return sub, reciprocal.inputs[0], [reciprocal]
    return None


def _match(div: gs.Node, sub: gs.Node, denominator: gs.Tensor, inverse: list[gs.Node],
           ctx: FuseContext) -> tuple[gs.Tensor, float, int, list[gs.Node]] | str:
    x, mean_x = sub.inputs
    if not has_dtype(x, FLOATS):
        return f"LayerNormalization takes float16/32/64, not {x.dtype}"
    mean = ir.producer(mean_x)
    if mean is None or mean.op != "ReduceMean" or mean.inputs[0] is not x or not owned(mean_x, ctx):
        return "the numerator is not an owned x - ReduceMean(x)"
    axes = reduce_axes(mean, ctx.opset)
    count = None if axes is None else trailing_axes(axes, len(x.shape) if x.shape is not None else None)
    if count is None:
        return f"ReduceMean '{mean.name}' does not reduce the last axes with keepdims"
    if not owned(sub.outputs[0], ctx, readers=2):
        return "x - mean(x) has readers besides the variance and the division"
    found = variance_of(denominator, sub.outputs[0], ctx)
    if isinstance(found, str):
        return found
    eps, variance_axes, nodes = found
    if not same_axes(variance_axes, axes, len(x.shape) if x.shape is not None else None):
        return "the two ReduceMeans reduce different axes"
    return x, eps, count, [mean, sub, div] + inverse + nodes
