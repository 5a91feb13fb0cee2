"""LayerNorm written out (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul γ][/Add β]) → LayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.fuse._pattern import (
    FLOATS,
    has_dtype,
    drop,
    emit,
    owned,
    reduce_axes,
    same_axes,
    scalar,
    sole_reader,
    split_scalar,
    trailing_axes,
)
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_layer_norm", "affine_tail", "variance_of", "norm_input"]

RULE = "layer_norm"


def fuse_layer_norm(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) [* γ] [+ β]` as LayerNormalization.

    The division may also be written `(x - mean(x)) * Reciprocal(sqrt(…))`.

    Opset ≥ 17 (the rule is gated in the catalogue). Both means must reduce the same trailing
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
        sub = graph_queries.producer(node.inputs[0])
        return (sub, node.inputs[1], []) if sub is not None and sub.op == "Sub" else None
    for centred, inverse in (node.inputs, reversed(node.inputs)):
        sub, reciprocal = graph_queries.producer(centred), graph_queries.producer(inverse)
        if sub is not None and sub.op == "Sub" and reciprocal is not None and reciprocal.op == "Reciprocal" \
                and owned(inverse, ctx):
            return sub, reciprocal.inputs[0], [reciprocal]
    return None


def _match(div: gs.Node, sub: gs.Node, denominator: gs.Tensor, inverse: list[gs.Node],
           ctx: FuseContext) -> tuple[gs.Tensor, float, int, list[gs.Node]] | str:
    x, mean_x = sub.inputs
    if not has_dtype(x, FLOATS):
        return f"LayerNormalization takes float16/32/64, not {x.dtype}"
    mean = graph_queries.producer(mean_x)
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


def variance_of(denominator: gs.Tensor, base: gs.Tensor, ctx: FuseContext) -> tuple[float, list[int], list[gs.Node]] | str:
    """Matches an owned `Sqrt(ReduceMean(base²) + eps)`: (eps, the reduced axes, its nodes)."""
    sqrt = graph_queries.producer(denominator)
    if sqrt is None or sqrt.op != "Sqrt" or not owned(denominator, ctx):
        return "the denominator is not an owned Sqrt"
    add = graph_queries.producer(sqrt.inputs[0])
    split = None if add is None or add.op != "Add" else split_scalar(add)
    if split is None or not owned(sqrt.inputs[0], ctx) or split[1] < 0:
        return "the Sqrt input is not an owned variance + eps"
    mean = graph_queries.producer(split[0])
    if mean is None or mean.op != "ReduceMean" or not owned(split[0], ctx):
        return "the variance is not an owned ReduceMean"
    axes = reduce_axes(mean, ctx.opset)
    square = graph_queries.producer(mean.inputs[0])
    if axes is None or square is None or not owned(mean.inputs[0], ctx):
        return "the variance's ReduceMean has unknown axes or does not read an owned square"
    is_square = (square.op == "Pow" and square.inputs[0] is base and scalar(square.inputs[1]) == 2.0) or (
        square.op == "Mul" and len(square.inputs) == 2 and all(t is base for t in square.inputs))
    if not is_square:
        return "the variance does not average the square of the centred input"
    return split[1], axes, [sqrt, add, mean, square]


def affine_tail(normed: gs.Tensor, axes_count: int, x: gs.Tensor, ctx: FuseContext, with_bias: bool = True):
    """The optional `* γ` then (if `with_bias`) `+ β` after a normalisation: (output, γ, β or None, nodes) or a reason.

    γ defaults to ones, which needs the normalised shape static; both must broadcast to the
    normalised shape alone (leading dimensions of 1 are dropped).
    """
    shape = None
    if x.shape is not None and len(x.shape) >= axes_count and tensor_shapes.is_static_shape(x.shape[len(x.shape) - axes_count:]):
        shape = tuple(int(d) for d in x.shape[len(x.shape) - axes_count:])
    dtype = x.dtype if x.dtype is not None else np.float32
    rank = len(x.shape) if x.shape is not None else None
    output, gamma, beta, nodes = normed, None, None, []
    reader = sole_reader(output, ctx)
    if reader is not None and reader.op == "Mul":
        gamma = _per_feature(reader, output, axes_count, shape, rank)
        if gamma is not None:
            nodes.append(reader)
            output = reader.outputs[0]
            reader = sole_reader(output, ctx)
    if with_bias and reader is not None and reader.op == "Add":
        beta = _per_feature(reader, output, axes_count, shape if shape is not None else getattr(gamma, "shape", None), rank)
        if beta is not None:
            nodes.append(reader)
            output = reader.outputs[0]
    if gamma is None:
        if shape is None and beta is None:
            return "the normalised shape is not static and there is no γ to take it from"
        gamma = np.ones(shape if shape is not None else beta.shape, dtype=dtype)
    if beta is not None and beta.shape != gamma.shape:
        gamma, beta = np.broadcast_arrays(gamma, beta)
    return output, np.ascontiguousarray(gamma, dtype=dtype), None if beta is None else np.ascontiguousarray(beta, dtype=dtype), nodes


def norm_input(ctx: FuseContext, hint: str, values: np.ndarray, tail: list[gs.Node]) -> gs.Tensor:
    """The Scale/Bias tensor: the γ or β initializer itself when it already has the right shape
    (so one shared by several norms stays one), else a new constant."""
    for node in tail:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and tensor.shape is not None and tuple(tensor.shape) == values.shape \
                    and np.dtype(tensor.dtype) == values.dtype and np.array_equal(tensor.values, values):
                return tensor
    return ctx.constant(hint, values)


def _per_feature(node: gs.Node, tensor: gs.Tensor, axes_count: int, shape, rank: int | None) -> np.ndarray | None:
    """The constant operand of `node` reshaped to the normalised axes, if it varies along them only.

    None too when the constant has more dimensions than the input (the product would gain rank).
    """
    other = node.inputs[1] if node.inputs[0] is tensor else node.inputs[0] if node.inputs[1] is tensor else None
    value = None if other is None or other is tensor else graph_queries.constant_value(other)
    if value is None or value.dtype.kind != "f":
        return None
    value = np.asarray(value)
    if value.ndim > (rank if rank is not None else axes_count):
        return None
    while value.ndim > axes_count and value.shape[0] == 1:
        value = value.reshape(value.shape[1:])
    if value.ndim > axes_count:
        return None
    target = shape if shape is not None else (1,) * (axes_count - value.ndim) + value.shape
    try:
        return np.broadcast_to(value, target).copy()
    except ValueError:
        return None
