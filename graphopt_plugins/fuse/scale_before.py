"""Per-channel Mul/Div (and, where exact, Add/Sub) by a constant folded into the Conv/Gemm/MatMul after it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import channel_operand, channel_vector, constant_operand, constant_operand_sites, fold_before, input_channels
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext
from graphopt_plugins.fuse.runtime_forms import fused_form_ending_at

__all__ = ["fold_channel_constants_before"]

RULE = "scale_before"
_OPS = ("Mul", "Add", "Sub", "Div")


def fold_channel_constants_before(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Linear(x ∘ c)` for ∘ in {*, /} (and + , - where exact) as `Linear'(x)`, on input channels.

    `Linear` is a Conv (any `group`), a Gemm (`transA`/`transB` respected) or a MatMul, with a
    constant weight, reading `x ∘ c` as its data input; `c` is a constant that varies along the
    input-channel axis only (a scalar qualifies). A scale multiplies the weight's input
    channels. A shift is folded into the bias only where it is exact: into a Gemm, and into a
    Conv without padding. With padding it is NOT exact — the padded border stays 0 where the
    shifted input would have been `c` — so it is refused (near miss), as for a MatMul, which
    has no bias. One exception saves a node exactly: `(x * s + c)` before such a node becomes
    `x + c/s` with `s` folded into the weight (s per-channel and non-zero).

    Does not fire when: `x ∘ c` has another reader or is a graph output; the constant is the
    left operand of Sub/Div, zero in a Div, or varies along other axes; the weight or bias is
    not a constant; on a constant that belongs to a form fused as a whole (`runtime_forms`: a
    LayerNorm's γ and β, the `* 0.5` ending a GELU, the `/ 6` ending a HardSwish): the
    activation and norm rules, or onnxruntime at load where the opset has no fused op yet,
    make one node of it, which saves more than this fold.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for node, x, value, index in constant_operand_sites(graph, _OPS):
        linear = sole_reader(node.outputs[0], ctx)
        if linear is None or id(linear) not in local or not linear.inputs or linear.inputs[0] is not node.outputs[0]:
            continue
        channels = input_channels(linear)
        if channels is None:
            continue
        form = fused_form_ending_at(x, node.op, ctx)
        vector = ("the constant is the left operand of Sub/Div" if index == 0 and node.op in ("Sub", "Div")
                  else f"it ends {form}, fused as a whole" if form is not None
                  else channel_operand(node.op, value, channels, "input"))
        if isinstance(vector, str):
            ctx.near_miss(RULE, node, vector)
            continue
        scale = {"Mul": vector, "Div": 1.0 / vector}.get(node.op)
        shift = {"Add": vector, "Sub": -vector}.get(node.op)
        if not fold_before(linear, scale, shift, ctx):
            if _swap_scale_past_shift(node, x, shift, linear, channels, local, ctx):
                rewritten += 1
                continue
            ctx.near_miss(RULE, node, f"a shift before a {linear.op} is not exact (padding, or no bias)")
            continue
        node.inputs.clear()
        node.outputs.clear()
        linear.inputs[0] = x
        rewritten += 1
    return rewritten


def _swap_scale_past_shift(add: gs.Node, x: gs.Tensor, shift: np.ndarray, linear: gs.Node, channels, local, ctx: FuseContext) -> bool:
    """`(x0 * s + b)` before a linear node that cannot take the shift: rewritten as `x0 + b/s`,
    with `s` folded into the weight. Needs a per-channel, non-zero `s` read by the Add alone."""
    mul = graph_queries.producer(x)
    if mul is None or mul.op != "Mul" or id(mul) not in local or sole_reader(x, ctx) is not add:
        return False
    operands = constant_operand(mul)
    if operands is None or fused_form_ending_at(operands[0], "Mul", ctx) is not None:
        return False
    rank, axis, count = channels
    scale = channel_vector(operands[1], rank, axis, count)
    if scale is None or not np.all(scale) or not fold_before(linear, scale, None, ctx):
        return False
    shape = [1] * rank
    shape[axis % rank] = count
    dtype = np.dtype(x.dtype) if x.dtype is not None else operands[1].dtype
    mul.inputs.clear()
    mul.outputs.clear()
    add.inputs[0], add.inputs[1] = operands[0], ctx.constant(f"{add.name}_shift", (shift / scale).reshape(shape).astype(dtype))
    return True
