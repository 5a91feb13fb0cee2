"""Small matching helpers shared by the pattern rules (activations, norms, attention).

All of them walk use-def edges (`graph_queries.producer` / `graph_queries.consumers`), O(uses) per step. A tensor
"owned" by a pattern is read by one node only and is not a graph output, so the pattern's
inner nodes can be dropped once its last output is rewired.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse.rule import FuseContext

__all__ = [
    "FLOAT_16_32",
    "FLOATS",
    "has_dtype",
    "scalar",
    "owned",
    "sole_reader",
    "local_producer_pairs",
    "other_input",
    "split_scalar",
    "is_close",
    "reduce_axes",
    "trailing_axes",
    "same_axes",
    "emit",
    "drop",
    "scaled_product",
]


FLOAT_16_32 = (np.float16, np.float32)  # what onnxruntime's CPU kernels for HardSwish, Gelu and the contrib ops take
FLOATS = (np.float16, np.float32, np.float64)  # what the norms take and constants the folds accept


def has_dtype(tensor: gs.Tensor, allowed) -> bool:
    """Whether the tensor's element type is known and one of `allowed` (numpy types)."""
    return tensor.dtype is not None and any(np.dtype(tensor.dtype) == np.dtype(t) for t in allowed)


def scalar(tensor: gs.Tensor) -> float | None:
    """The value of a compile-time constant holding one element, else None."""
    value = graph_queries.constant_value(tensor)
    if value is None or np.size(value) != 1 or np.asarray(value).dtype.kind not in "fiu":
        return None
    return float(np.asarray(value).reshape(()))


def owned(tensor: gs.Tensor, ctx: FuseContext, readers: int = 1) -> bool:
    """Whether `tensor` is read by exactly `readers` nodes and is not a graph output."""
    return len(graph_queries.consumers(tensor)) == readers and not ctx.is_graph_output(tensor)


def sole_reader(tensor: gs.Tensor, ctx: FuseContext) -> gs.Node | None:
    """The one node reading `tensor` when the tensor is owned by it, else None."""
    return graph_queries.consumers(tensor)[0] if owned(tensor, ctx) else None


def local_producer_pairs(graph: gs.Graph, ctx: FuseContext, reader_ops: tuple[str, ...],
                         producer_ops: tuple[str, ...]) -> Iterator[tuple[gs.Node, gs.Node]]:
    """(reader, producer) for each node of the level whose op is in `reader_ops` and whose first
    input a node of the same level with an op in `producer_ops` makes (partners in nested
    bodies or outer graphs are never merged)."""
    local = ctx.local_nodes()
    for reader in list(graph.nodes):
        if reader.op not in reader_ops or not reader.inputs:
            continue
        producer = graph_queries.producer(reader.inputs[0])
        if producer is not None and producer.op in producer_ops and id(producer) in local:
            yield reader, producer


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """For a binary node reading `tensor`, its other operand (the first one if both are `tensor`)."""
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] is tensor:
        return node.inputs[1]
    if node.inputs[1] is tensor:
        return node.inputs[0]
    return None


def split_scalar(node: gs.Node) -> tuple[gs.Tensor, float] | None:
    """For a binary node with one scalar-constant operand: (the other operand, the scalar)."""
    if len(node.inputs) != 2:
        return None
    for index in (1, 0):
        value = scalar(node.inputs[index])
        if value is not None and scalar(node.inputs[1 - index]) is None:
            return node.inputs[1 - index], value
    return None


def is_close(value: float | None, expected: float, rtol: float = 1e-4) -> bool:
    return value is not None and abs(value - expected) <= rtol * abs(expected)


def reduce_axes(node: gs.Node, opset: int) -> list[int] | None:
    """The axes a Reduce* node reduces (attribute before opset 18, input from 18), None if unknown.

    None also when the node would reduce every axis (no axes given) or does not keep dims.
    """
    if int(node.attrs.get("keepdims", 1)) != 1:
        return None
    axes_are_input = opset >= (13 if node.op == "ReduceSum" else 18)
    if axes_are_input:
        if len(node.inputs) < 2 or node.inputs[1].name == "":
            return None
        value = graph_queries.constant_value(node.inputs[1])
        return None if value is None else [int(axis) for axis in np.asarray(value).reshape(-1)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(axis) for axis in axes]


def same_axes(first: list[int], second: list[int], rank: int | None) -> bool:
    """Whether two axis lists name the same axes (negative ones counted from `rank` when known)."""
    if rank is None:
        return sorted(first) == sorted(second)
    return sorted(a % rank for a in first) == sorted(a % rank for a in second)


def trailing_axes(axes: list[int], rank: int | None) -> int | None:
    """How many trailing axes `axes` names (e.g. [-1] → 1, [2, 3] of rank 4 → 2), else None."""
    if rank is not None:
        normalized = sorted(axis + rank if axis < 0 else axis for axis in axes)
        return len(normalized) if normalized == list(range(rank - len(axes), rank)) else None
    if all(axis < 0 for axis in axes) and sorted(axes) == list(range(-len(axes), 0)):
        return len(axes)
    return None


def emit(ctx: FuseContext, op: str, inputs: list[gs.Tensor], output: gs.Tensor, attrs: dict | None = None,
         domain: str | None = None, outputs: list[gs.Tensor] | None = None) -> gs.Node:
    """Adds a node writing `output` (taken from its old producer, so its name and readers stay)."""
    old = graph_queries.producer(output)
    if old is not None:
        del old.outputs[next(i for i, tensor in enumerate(old.outputs) if tensor is output)]
    node = gs.Node(op=op, name=ctx.fresh_name(op), attrs=attrs or {}, inputs=inputs,
                   outputs=outputs if outputs is not None else [output], domain=domain)
    ctx.graph.nodes.append(node)
    return node


def drop(nodes: list[gs.Node]) -> None:
    """Disconnects a matched pattern's old nodes so later sites this round see true reader counts.

    The dead-node sweep between rounds removes them from the graph.
    """
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()


def scaled_product(start: gs.Tensor, x: gs.Tensor, scale: float, ctx: FuseContext,
                   max_steps: int = 3) -> tuple[gs.Tensor, list[gs.Node]] | str:
    """Follows `start` through owned Mul/Div nodes until it has been multiplied by `x` and by `scale`.

    Accepts every order exporters write `scale * x * start` in: `(x*start)*c`, `x*(c*start)`,
    `(c*x)*start`, `(x*start)/d`, … Returns (the product's tensor, the nodes on the way), or
    the reason it is not such a product.
    """
    current, nodes, factor, seen_x = start, [], 1.0, False
    for _ in range(max_steps):
        node = sole_reader(current, ctx)
        if node is None:
            return f"'{current.name}' has other readers"
        if node.op == "Mul":
            other, divide = other_input(node, current), False
        elif node.op == "Div" and node.inputs[0] is current and node.inputs[1] is not current:
            other, divide = node.inputs[1], True
        else:
            return f"'{current.name}' is read by {node.op}, not by Mul/Div"
        value = scalar(other)
        if other is x and not seen_x and not divide:
            seen_x = True
        elif value is not None and value != 0:
            factor = factor / value if divide else factor * value
        else:
            scaled_x = _scaled(other, x, ctx)
            if scaled_x is None or seen_x or divide:
                return f"{node.op} '{node.name}' multiplies by something other than x or a constant"
            seen_x, factor = True, factor * scaled_x[0]
            nodes.append(scaled_x[1])
        nodes.append(node)
        current = node.outputs[0]
        if seen_x and is_close(factor, scale):
            return current, nodes
    return f"the product is not x * {scale:g} * the pattern"


def _scaled(tensor: gs.Tensor, x: gs.Tensor, ctx: FuseContext) -> tuple[float, gs.Node] | None:
    """(c, node) when `tensor` is an owned `x*c`, `c*x` or `x/c`."""
    node = graph_queries.producer(tensor)
    if node is None or node.op not in ("Mul", "Div") or not owned(tensor, ctx):
        return None
    split = split_scalar(node)
    if split is None or split[0] is not x or split[1] == 0:
        return None
    if node.op == "Div":
        return (1.0 / split[1], node) if node.inputs[0] is x else None
    return split[1], node
