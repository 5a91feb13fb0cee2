"""What LayerNorm and RMSNorm share: the root of a mean square, and the γ/β after the division."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.fuse._formula import AnyOf, Const, Op, Var, match
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["affine_tail", "root_of_mean_square", "norm_input", "normalisation_sites"]


def normalisation_sites(graph: gs.Graph, ctx: FuseContext, rule: str, pattern, looks_like, checked, with_bias: bool):
    """(x, the match, number of normalised axes, the γ/β tail) for each division in `graph` that
    `pattern` matches, `checked(match, ctx)` accepts (an axis count, else a reason) and an affine
    tail follows; the others are logged as near misses. `looks_like(node)` is a cheap first look."""
    for node in list(graph.nodes):
        if node.op not in ("Div", "Mul") or len(node.inputs) != 2 or not looks_like(node):
            continue
        found = match(pattern, node.outputs[0], ctx)
        count = checked(found, ctx) if found else found.reason
        tail = count if isinstance(count, str) else affine_tail(node.outputs[0], count, found["x"], ctx, with_bias=with_bias)
        if isinstance(tail, str):
            ctx.near_miss(rule, node, tail)
            continue
        yield node, found, count, tail


def root_of_mean_square(base: Var) -> Op:
    """`sqrt(mean(base²) + eps)`, the square as `Pow(base, 2)` or `base*base`; binds `variance`
    (the mean's output) and `eps`."""
    square = AnyOf(Op("Pow", base, Const(2.0)), Op("Mul", base, base))
    return Op("Sqrt", Op("Add", Op("ReduceMean", square, partial=True, name="variance"), Const(name="eps")))


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
