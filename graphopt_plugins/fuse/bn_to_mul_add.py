"""A BatchNormalization no linear node absorbed becomes a per-channel Mul and Add that fold further."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt_plugins.fuse._affine import input_channels
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.bn_fold import batchnorm_affine
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["batchnorm_to_mul_add"]

RULE = "bn_to_mul_add"


def batchnorm_to_mul_add(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites an inference-mode `BN(x)` as `Mul(Add(x, shift / scale), scale)` with (C, 1, …, 1) constants.

    Fires only where that pays: BN's output is read only by a Conv, Gemm or MatMul with a
    constant weight whose input channels are BN's channels, so `scale_before` folds the Mul
    into its weight next round, then the Add too where that is exact (an unpadded Conv, a
    Gemm); the node count never grows. The shift goes first so that the Mul, which always
    folds, is the node next to the weight. A BN right after a linear node is `bn_fold`'s (it runs first).

    Does not fire when: BN's statistics are not constants, it is in training mode or its extra
    outputs are used; a scale is zero; the input's rank is unknown; BN's output has several readers, is a graph
    output, or feeds anything else (two elementwise nodes would then replace one BN).
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or not bn.inputs:
            continue
        affine = batchnorm_affine(bn, ctx)
        if affine is None:
            continue
        reader = sole_reader(bn.outputs[0], ctx)
        channels = input_channels(reader) if reader is not None and id(reader) in local and reader.inputs[0] is bn.outputs[0] else None
        if channels is None or channels[1] % channels[0] != 1 or channels[2] != len(affine[0]):
            ctx.near_miss(RULE, bn, "its output does not feed (only) a linear node with constant weights on its channel axis")
            continue
        if not np.all(affine[0]):
            ctx.near_miss(RULE, bn, "a channel's scale is zero")
            continue
        x = bn.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        if rank is None or rank < 2:
            ctx.near_miss(RULE, bn, "the input's rank is unknown")
            continue
        dtype = np.dtype(x.dtype) if x.dtype is not None else np.dtype(np.float32)
        shape = (-1,) + (1,) * (rank - 2)
        scale = ctx.constant(f"{bn.name}_scale", affine[0].reshape(shape).astype(dtype))
        shift = ctx.constant(f"{bn.name}_shift", (affine[1] / affine[0]).reshape(shape).astype(dtype))
        shifted = ctx.variable(f"{bn.name}_shifted", dtype=x.dtype, shape=x.shape)
        result = bn.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        graph.nodes.append(gs.Node("Add", ctx.fresh_name(f"{bn.name}_add"), inputs=[x, shift], outputs=[shifted]))
        graph.nodes.append(gs.Node("Mul", ctx.fresh_name(f"{bn.name}_mul"), inputs=[shifted, scale], outputs=[result]))
        rewritten += 1
    return rewritten
