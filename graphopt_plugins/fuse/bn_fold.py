"""BatchNormalization folded into the Conv, ConvTranspose, Gemm or MatMul that feeds it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import LINEAR_OPS, fold_after, output_channels, take_output
from graphopt_plugins.fuse._pattern import local_producer_pairs, sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fold_batchnorm_into_linear", "batchnorm_affine"]

RULE = "bn_fold"


def fold_batchnorm_into_linear(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `BN(Linear(x))` as `Linear'(x)`: BN's per-channel scale and shift go into the weights and bias.

    `Linear` is a Conv or ConvTranspose (any `group`: ConvTranspose's weight is (C_in,
    C_out/group, k…), so its output channels are scaled group by group), a Gemm (`transB`
    says which axis of B holds the output channels; `beta*C` becomes the new C) or a MatMul
    with a constant 2-D weight and 2-D input (it becomes a Gemm, since MatMul has no bias).
    BN's channel axis is 1, so it must be the linear node's output-channel axis.

    Does not fire when: the linear node's output has another reader or is a graph output (the
    unnormalised value is still needed); its weight or bias is not a constant; BN's statistics
    are not constants, it is in training mode, or its extra outputs are used; BN normalises an
    axis other than the output channels (a MatMul with a 3-D output).
    """
    rewritten = 0
    for bn, linear in local_producer_pairs(graph, ctx, ("BatchNormalization",), LINEAR_OPS):
        affine = batchnorm_affine(bn, ctx)
        if affine is None:
            ctx.near_miss(RULE, bn, "statistics are not constants, or training mode / extra outputs used")
            continue
        if sole_reader(bn.inputs[0], ctx) is not bn:
            ctx.near_miss(RULE, bn, f"the {linear.op}'s output has other readers")
            continue
        channels = output_channels(linear)
        if channels is None:
            ctx.near_miss(RULE, bn, f"the {linear.op}'s weight or bias is not a constant (or its rank is unknown)")
            continue
        rank, axis, count = channels
        if axis % rank != 1 or count != len(affine[0]):
            ctx.near_miss(RULE, bn, f"BN's channel axis is not the {linear.op}'s output-channel axis")
            continue
        if not fold_after(linear, affine[0], affine[1], ctx):
            ctx.near_miss(RULE, bn, "a MatMul with a shift needs 2-D operands to become a Gemm")
            continue
        take_output(linear, bn)
        rewritten += 1
    return rewritten


def batchnorm_affine(bn: gs.Node, ctx: FuseContext) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel, in float64, for an inference-mode BN with constant statistics."""
    if len(bn.inputs) != 5 or int(bn.attrs.get("training_mode", 0)) or int(bn.attrs.get("spatial", 1)) != 1:
        return None
    if any(graph_queries.consumers(extra) or ctx.is_graph_output(extra) for extra in bn.outputs[1:]):
        return None
    values = [graph_queries.constant_value(tensor) for tensor in bn.inputs[1:]]
    if any(value is None for value in values):
        return None
    gamma, beta, mean, var = (np.asarray(value, dtype=np.float64).reshape(-1) for value in values)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return scale, beta - mean * scale
