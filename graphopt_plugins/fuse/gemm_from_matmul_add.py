"""MatMul followed by a bias Add becomes one Gemm when both operands are 2-D."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import take_output
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["gemm_from_matmul_add"]

RULE = "gemm_from_matmul_add"
_GEMM_TYPES = (np.float16, np.float32, np.float64)


def gemm_from_matmul_add(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Add(MatMul(A, B), C)` (either Add operand order) as `Gemm(A, B, C)`.

    Fires when A and B are both known to be 2-D and floating point, and C's shape is known and
    broadcasts to the (M, N) product one way (rank ≤ 2, each dim 1 or equal), as Gemm's C must.

    Does not fire when: an operand's rank is not 2 or unknown (batched MatMul: Gemm is 2-D
    only); C would broadcast the product to a larger shape; the MatMul's output has another
    reader or is a graph output; the dtype is not a float Gemm takes.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for add in list(graph.nodes):
        if add.op != "Add" or len(add.inputs) != 2:
            continue
        for index in (0, 1):
            matmul = graph_queries.producer(add.inputs[index])
            if matmul is not None and matmul.op == "MatMul" and len(matmul.inputs) == 2 and id(matmul) in local:
                break
        else:
            continue
        product, bias = add.inputs[index], add.inputs[1 - index]
        reason = _refusal(matmul, product, bias, ctx)
        if reason is not None:
            ctx.near_miss(RULE, add, reason)
            continue
        matmul.op, matmul.attrs = "Gemm", {}
        matmul.inputs.append(bias)
        take_output(matmul, add)
        rewritten += 1
    return rewritten


def _refusal(matmul: gs.Node, product: gs.Tensor, bias: gs.Tensor, ctx: FuseContext) -> str | None:
    if sole_reader(product, ctx) is None:
        return "the MatMul's output has other readers"
    shapes = [tensor.shape for tensor in (*matmul.inputs, product)]
    if any(shape is None or len(shape) != 2 for shape in shapes):
        return "an operand is not known to be 2-D"
    dtype = matmul.inputs[0].dtype
    if dtype is None or np.dtype(dtype).type not in _GEMM_TYPES:
        return "not a float type Gemm takes"
    if bias.shape is None or len(bias.shape) > 2 or (bias.dtype is not None and np.dtype(bias.dtype) != np.dtype(dtype)):
        return "the bias's shape is unknown or of rank > 2"
    out = shapes[2]
    for size, target in zip(reversed(list(bias.shape)), reversed(list(out))):
        if size != 1 and size != target:
            return "the bias does not broadcast to the product's shape one way"
    return None
