"""Per-channel Mul/Add/Sub/Div by a constant folded into the Conv/ConvTranspose/Gemm/MatMul/BN before it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import LINEAR_OPS, channel_operand, constant_operand_sites, fold_after, output_channels, take_output
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.bn_fold import batchnorm_affine
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fold_channel_constants_after"]

RULE = "scale_after"
_OPS = ("Mul", "Add", "Sub", "Div")


def fold_channel_constants_after(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Linear(x) ∘ c` for ∘ in {*, +, -, /} as `Linear'(x)`, scaling or shifting output channels.

    `c` must be constant and per output channel: after broadcasting against the linear node's
    output it varies along the channel axis only (axis 1 of a Conv/ConvTranspose/Gemm output,
    the last axis of a MatMul's) and neither grows the output's rank nor its shape; a scalar
    qualifies. `x * c` and `x / c` scale the weight and bias; `x + c`, `c + x` and `x - c`
    shift the bias. A MatMul has no bias: a shift turns it into a Gemm when both operands are
    2-D (else `gemm_from_matmul_add` or nothing takes it). An inference-mode
    BatchNormalization with constant parameters takes the same on its channel axis 1 (into its
    scale and bias), as Caffe2-style `BN → Mul → Add` chains have it.

    Does not fire when: the linear node's output has another reader or is a graph output;
    its weight or bias is not a constant; `c - x` or `c / x` (not affine in the output);
    `c` is zero in a Div; `c` broadcasts along other axes or is not floating point.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for node, x, value, index in constant_operand_sites(graph, _OPS):
        linear = graph_queries.producer(x)
        if linear is None or linear.op not in LINEAR_OPS + ("BatchNormalization",) or id(linear) not in local:
            continue
        if index == 0 and node.op in ("Sub", "Div"):
            ctx.near_miss(RULE, node, "the constant is the left operand of Sub/Div")
            continue
        if sole_reader(x, ctx) is not node:
            ctx.near_miss(RULE, node, f"the {linear.op}'s output has other readers")
            continue
        channels = output_channels(linear) if linear.op != "BatchNormalization" else _bn_channels(linear, x, ctx)
        if channels is None:
            ctx.near_miss(RULE, node, f"the {linear.op}'s weight or bias is not a constant (or its rank is unknown)")
            continue
        vector = channel_operand(node.op, value, channels, "output")
        if isinstance(vector, str):
            ctx.near_miss(RULE, node, vector)
            continue
        count = channels[2]
        ones, zeros = np.ones(count), np.zeros(count)
        # Each pair built only for its op: 1/vector of a Mul's zeros would warn of a division by zero.
        scale, shift = {"Mul": lambda: (vector, zeros), "Div": lambda: (1.0 / vector, zeros),
                        "Add": lambda: (ones, vector), "Sub": lambda: (ones, -vector)}[node.op]()
        if linear.op == "BatchNormalization":
            _fold_into_batchnorm(linear, scale, shift, ctx)
        elif not fold_after(linear, scale, shift, ctx):
            ctx.near_miss(RULE, node, "a MatMul takes a shift only with 2-D operands (as a Gemm)")
            continue
        take_output(linear, node)
        rewritten += 1
    return rewritten


def _bn_channels(bn: gs.Node, x: gs.Tensor, ctx: FuseContext) -> tuple[int, int, int] | None:
    if batchnorm_affine(bn, ctx) is None or x.shape is None:
        return None
    return len(x.shape), 1, int(np.asarray(graph_queries.constant_value(bn.inputs[1])).size)


def _fold_into_batchnorm(bn: gs.Node, scale: np.ndarray, shift: np.ndarray, ctx: FuseContext) -> None:
    """BN(x) * s + t = (x - mean) / sqrt(var + eps) * (gamma * s) + (beta * s + t)."""
    gamma, beta = (np.asarray(graph_queries.constant_value(t)) for t in bn.inputs[1:3])
    bn.inputs[1] = ctx.constant(f"{bn.name}_scale", (gamma.astype(np.float64) * scale).astype(gamma.dtype))
    bn.inputs[2] = ctx.constant(f"{bn.name}_bias", (beta.astype(np.float64) * scale + shift).astype(beta.dtype))
