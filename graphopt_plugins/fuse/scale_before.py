"""Per-channel Mul/Div (and, where exact, Add/Sub) by a constant folded into the Conv/Gemm/MatMul after it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._affine import channel_vector, constant_operand, fold_before, input_channels, sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fold_channel_constants_before"]

RULE = "scale_before"
_OPS = ("Mul", "Add", "Sub", "Div")
_HARDSWISH_GATES = ("Clip", "HardSigmoid")  # x * Clip(x + 3, 0, 6) / 6, x * HardSigmoid(x)
_GELU_GATES = ("Erf", "Tanh")  # x * (1 + Erf(x / √2)) * 0.5, x * (1 + Tanh(…)) * 0.5


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
    not a constant; on the `/ 6` that ends a decomposed HardSwish (`x * Clip(x + 3, 0, 6) / 6`,
    opset ≥ 14) or the `* 0.5` that ends a decomposed GELU (`x * (1 + Erf(x / √2)) * 0.5`, opset ≥
    20 or `target=onnxruntime`): where the activation rules can fuse the whole form into one
    node, that saves more than this fold.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for node in list(graph.nodes):
        if node.op not in _OPS:
            continue
        operands = constant_operand(node)
        if operands is None:
            continue
        x, value, index = operands
        linear = sole_reader(node.outputs[0], ctx)
        if linear is None or id(linear) not in local or not linear.inputs or linear.inputs[0] is not node.outputs[0]:
            continue
        channels = input_channels(linear)
        if channels is None:
            continue
        if index == 0 and node.op in ("Sub", "Div"):
            ctx.near_miss(RULE, node, "the constant is the left operand of Sub/Div")
            continue
        if node.op in ("Mul", "Div") and _ends_activation(x, ctx):
            ctx.near_miss(RULE, node, "it ends a gated activation the activation rules fuse")
            continue
        rank, axis, count = channels
        vector = channel_vector(value, rank, axis, count)
        if vector is None or (node.op == "Div" and not np.all(vector)):
            ctx.near_miss(RULE, node, "the constant is not a non-zero per-input-channel float")
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
    if operands is None or _ends_activation(operands[0], ctx):
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


def _ends_activation(x: gs.Tensor, ctx: FuseContext) -> bool:
    """Whether `x` is the gated product of a decomposed HardSwish or GELU that an activation rule
    could fuse at this opset and target."""
    gate = graph_queries.producer(x)
    if gate is None or gate.op != "Mul" or len(gate.inputs) != 2:
        return False
    for operand in gate.inputs:
        source = graph_queries.producer(operand)
        if source is None:
            continue
        if source.op in _HARDSWISH_GATES and ctx.opset >= 14:
            return True
        if source.op == "Add" and (ctx.opset >= 20 or ctx.allows_contrib_ops):
            if any(graph_queries.producer(t) is not None and graph_queries.producer(t).op in _GELU_GATES for t in source.inputs):
                return True
    return False
