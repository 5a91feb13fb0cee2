"""What LayerNorm and RMSNorm share: the variance under the root, and the γ/β after the division."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt_plugins.fuse._pattern import owned, reduce_axes, scalar, sole_reader, split_scalar
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["affine_tail", "variance_of", "norm_input"]


def variance_of(denominator: gs.Tensor, base: gs.Tensor, ctx: FuseContext) -> tuple[float, list[int], list[gs.Node]] | str:
    """Matches an owned `Sqrt(ReduceMean(base²) + eps)`: (eps, the reduced axes, its nodes)."""
    sqrt = ir.producer(denominator)
    if sqrt is None or sqrt.op != "Sqrt" or not owned(denominator, ctx):
        return "the denominator is not an owned Sqrt"
    add = ir.producer(sqrt.inputs[0])
    split = None if add is None or add.op != "Add" else split_scalar(add)
    if split is None or not owned(sqrt.inputs[0], ctx) or split[1] < 0:
        return "the Sqrt input is not an owned variance + eps"
    mean = ir.producer(split[0])
    if mean is None or mean.op != "ReduceMean" or not owned(split[0], ctx):
        return "the variance is not an owned ReduceMean"
    axes = reduce_axes(mean, ctx.opset)
    square = ir.producer(mean.inputs[0])
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
    if x.shape is not None and len(x.shape) >= axes_count and ir.is_static_shape(x.shape[len(x.shape) - axes_count:]):
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
    value = None if other is None or other is tensor else ir.constant_value(other)
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
