"""RMSNorm written out (`x / sqrt(mean(x²) + eps) [* γ]`) → RMSNormalization (opset 23)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import FLOATS, drop, emit, has_dtype, is_close, scalar, sole_reader, trailing_axes
from graphopt_plugins.fuse.layer_norm import affine_tail, norm_input, variance_of
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_rms_norm"]

RULE = "rms_norm"


def fuse_rms_norm(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `x / sqrt(mean(x²) + eps)`, `x * Reciprocal(sqrt(…))` or `x * (1 / sqrt(…))`, then `* γ`, as RMSNormalization.

    Opset ≥ 23 (gated in the catalogue; onnxruntime 1.32 runs it on CPU). No contrib form:
    onnxruntime's SimplifiedLayerNormalization is registered in the ONNX domain, which the
    ONNX checker rejects, so below opset 23 the pattern stays under every target. The mean
    must reduce the trailing axes with keepdims; the square is `Pow(x, 2)` or `x*x`. Must not
    fire when an inner tensor has other readers or is a graph output, or the normalised
    tensor is not the one squared.
    """
    rewritten = 0
    for sqrt in list(graph.nodes):
        if sqrt.op != "Sqrt" or not sqrt.outputs:
            continue
        found = _match(sqrt, ctx)
        if isinstance(found, str):
            ctx.near_miss(RULE, sqrt, found)
            continue
        x, eps, axes_count, normed, nodes = found
        tail = affine_tail(normed, axes_count, x, ctx, with_bias=False)
        if isinstance(tail, str):
            ctx.near_miss(RULE, sqrt, tail)
            continue
        output, gamma, _, tail_nodes = tail
        emit(ctx, "RMSNormalization", [x, norm_input(ctx, "rms_scale", gamma, tail_nodes)], output,
             {"axis": -axes_count, "epsilon": float(eps)})
        drop(nodes + tail_nodes)
        rewritten += 1
    return rewritten


def _match(sqrt: gs.Node, ctx: FuseContext):
    add = graph_queries.producer(sqrt.inputs[0])
    mean = None if add is None or add.op != "Add" else next(
        (graph_queries.producer(t) for t in add.inputs if graph_queries.producer(t) is not None and graph_queries.producer(t).op == "ReduceMean"), None)
    square = None if mean is None else graph_queries.producer(mean.inputs[0])
    if square is None or square.op not in ("Pow", "Mul") or not square.inputs:
        return "the Sqrt does not read mean(x²) + eps"
    x = square.inputs[0]
    if not has_dtype(x, FLOATS):
        return f"RMSNormalization takes float16/32/64, not {x.dtype}"
    found = variance_of(sqrt.outputs[0], x, ctx)
    if isinstance(found, str):
        return found
    eps, axes, nodes = found
    count = trailing_axes(axes, len(x.shape) if x.shape is not None else None)
    if count is None:
        return "the mean is not over the last axes"
    reader = sole_reader(sqrt.outputs[0], ctx)
    if reader is None:
        return "the Sqrt output has other readers"
    if reader.op == "Div" and reader.inputs[0] is x and reader.inputs[1] is sqrt.outputs[0]:
        return x, eps, count, reader.outputs[0], nodes + [reader]
    inverse = reader.op == "Reciprocal" or (
        reader.op == "Div" and reader.inputs[1] is sqrt.outputs[0] and is_close(scalar(reader.inputs[0]), 1.0))
    product = sole_reader(reader.outputs[0], ctx) if inverse else None
    if product is None or product.op != "Mul" or not any(t is x for t in product.inputs) \
            or not any(t is reader.outputs[0] for t in product.inputs):
        return "the inverse root does not multiply the squared tensor"
    return x, eps, count, product.outputs[0], nodes + [reader, product]
