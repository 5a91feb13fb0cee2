"""LayerNorm written out (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul γ][/Add β]) → LayerNormalization."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._formula import AnyOf, Match, Op, Var
from graphopt_plugins.fuse._norm import norm_input, normalisation_sites, root_of_mean_square
from graphopt_plugins.fuse._pattern import FLOATS, drop, emit, has_dtype, reduce_axes, same_axes, trailing_axes
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_layer_norm"]

RULE = "layer_norm"

X, D = Var("x"), Var("d")
CENTRED = Op("Sub", X, Op("ReduceMean", X, partial=True, name="mean"), name="d", readers=2)  # d = x - mean(x)
ROOT = root_of_mean_square(D)  # sqrt(mean(d²) + eps)
LAYER_NORM = AnyOf(Op("Div", CENTRED, ROOT), Op("Mul", CENTRED, Op("Reciprocal", ROOT)))  # d / sqrt(mean(d²) + eps)


def fuse_layer_norm(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) [* γ] [+ β]` as LayerNormalization.

    The division may also be written `(x - mean(x)) * Reciprocal(sqrt(…))`.

    Opset ≥ 17; below it the site is left as written (onnxruntime fuses that form when it loads
    the model, and `runtime_forms` keeps the folds off its γ/β) and counted in the pass's warnings.
    Both means must reduce the same trailing axes with keepdims (axes an attribute before opset 18, an input from 18 on); the square is
    `Pow(d, 2)` or `d*d`; `eps` a scalar constant; γ and β constants that broadcast to the
    normalised shape only (a γ varying along a leading axis would not fit Scale). Without γ the
    normalised shape must be static (Scale gets ones). Must not fire when an inner tensor has
    other readers, the axes are not the last ones, or a constant is missing.
    """
    rewritten = 0
    for node, found, count, tail in normalisation_sites(graph, ctx, RULE, LAYER_NORM, _reads_a_difference, _checked, True):
        if ctx.opset < 17:
            ctx.leave_unfused(RULE, node, "LayerNorm(s) left written out for onnxruntime to fuse at load",
                              "LayerNormalization", 17)
            continue
        output, gamma, beta, tail_nodes = tail
        inputs = [found["x"], norm_input(ctx, "ln_scale", gamma, tail_nodes)]
        inputs += [norm_input(ctx, "ln_bias", beta, tail_nodes)] if beta is not None else []
        emit(ctx, "LayerNormalization", inputs, output, {"axis": -count, "epsilon": float(found["eps"])})
        drop(found.nodes + tail_nodes)
        rewritten += 1
    return rewritten


def _reads_a_difference(node: gs.Node) -> bool:
    """A cheap first look, so that only the divisions of a `x - m` are matched (and logged)."""
    return any((producer := graph_queries.producer(t)) is not None and producer.op == "Sub" for t in node.inputs)


def _checked(found: Match, ctx: FuseContext) -> int | str:
    """What the formula cannot say: the element type, eps ≥ 0, and both means over the same
    trailing axes with keepdims. The number of normalised axes, or why the site does not fit."""
    x = found["x"]
    if not has_dtype(x, FLOATS):
        return f"LayerNormalization takes float16/32/64, not {x.dtype}"
    if found["eps"] < 0:
        return "eps is negative"
    rank = len(x.shape) if x.shape is not None else None
    mean, variance = graph_queries.producer(found["mean"]), graph_queries.producer(found["variance"])
    axes, variance_axes = reduce_axes(mean, ctx.opset), reduce_axes(variance, ctx.opset)
    count = None if axes is None else trailing_axes(axes, rank)
    if count is None:
        return f"ReduceMean '{mean.name}' does not reduce the last axes with keepdims"
    if variance_axes is None or not same_axes(variance_axes, axes, rank):
        return "the two ReduceMeans reduce different axes"
    return count
