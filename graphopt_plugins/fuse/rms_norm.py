"""RMSNorm written out (`x / sqrt(mean(x²) + eps) [* γ]`) → RMSNormalization (opset 23)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._formula import AnyOf, Const, Match, Op, Var
from graphopt_plugins.fuse._norm import norm_input, normalisation_sites, root_of_mean_square
from graphopt_plugins.fuse._pattern import FLOATS, drop, emit, has_dtype, reduce_axes, trailing_axes
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fuse_rms_norm"]

RULE = "rms_norm"

X = Var("x")
ROOT = root_of_mean_square(X)  # sqrt(mean(x²) + eps)
RMS_NORM = AnyOf(Op("Div", X, ROOT),  # x / sqrt(mean(x²) + eps)
                 Op("Mul", X, Op("Reciprocal", ROOT)),  # x * Reciprocal(sqrt(…))
                 Op("Mul", X, Op("Div", Const(1.0), ROOT)))  # x * (1 / sqrt(…))


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
    for node, found, count, tail in normalisation_sites(graph, ctx, RULE, RMS_NORM, _reads_a_root, _checked, False):
        output, gamma, _, tail_nodes = tail
        emit(ctx, "RMSNormalization", [found["x"], norm_input(ctx, "rms_scale", gamma, tail_nodes)], output,
             {"axis": -count, "epsilon": float(found["eps"])})
        drop(found.nodes + tail_nodes)
        rewritten += 1
    return rewritten


def _reads_a_root(node: gs.Node) -> bool:
    """A cheap first look: the node reads a Sqrt, its Reciprocal, or 1 / it."""
    for tensor in node.inputs:
        producer = graph_queries.producer(tensor)
        if producer is not None and producer.op in ("Reciprocal", "Div") and producer.inputs:
            producer = graph_queries.producer(producer.inputs[-1])
        if producer is not None and producer.op == "Sqrt":
            return True
    return False


def _checked(found: Match, ctx: FuseContext) -> int | str:
    """The element type, eps ≥ 0, the mean over trailing axes: the number of normalised axes, or why not."""
    x = found["x"]
    if not has_dtype(x, FLOATS):
        return f"RMSNormalization takes float16/32/64, not {x.dtype}"
    if found["eps"] < 0:
        return "eps is negative"
    axes = reduce_axes(graph_queries.producer(found["variance"]), ctx.opset)
    count = None if axes is None else trailing_axes(axes, len(x.shape) if x.shape is not None else None)
    return "the mean is not over the last axes" if count is None else count
