"""Which nodes the quantizer may touch, on which weight axis, and whether it already ran.

A target is a Conv, ConvTranspose, Gemm or MatMul of the main graph whose weight is a float
constant. Targets are named by their position in the main graph's node list, which is stable
across fresh imports of the same model (the pass re-imports to try alternatives).
Nested bodies (If/Loop/Scan) and local functions are deliberately left in float.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries

__all__ = ["Target", "find_targets", "find_embeddings", "is_quantized", "QUANTIZED_OPS", "weight_axis"]

# Ops that mean a graph was quantized already (by graphopt or by another tool).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul", "MatMulNBits",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearConcat", "QLinearSigmoid",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSoftmax",
})
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass
class Target:
    """One quantizable node: `index` in the main graph, its weight's per-channel `axis`."""

    index: int
    name: str
    op: str
    activation: str  # the tensor quantized on the way in
    weight_shape: tuple[int, ...]
    axis: int  # output-channel axis of the weight
    reduction_axis: int  # the axis the weight is summed over (blocks of int4 run along it)
    relu_output: str | None = None  # a Relu reading only this node's output, absorbed by the output Q
    output: str = ""
    macs: int = 0
    weight: str = ""  # the weight tensor's name: targets that share one are quantized together


def is_quantized(graph: gs.Graph) -> bool:
    """Quantized ops, or a weight stored int8 and cast back to float (`stored_weights.py`)."""
    return any(node.op in QUANTIZED_OPS or (node.op == "Cast" and isinstance(node.inputs[0], gs.Constant)
                                            and node.inputs[0].dtype == np.int8)
               for _, node in graph_queries.iter_nodes(graph))


def weight_axis(node: gs.Node, weight: np.ndarray) -> tuple[int, int] | None:
    """(output-channel axis, reduction axis) of `node`'s weight, or None if unsupported."""
    if node.op == "Conv":
        return 0, 1
    if node.op == "ConvTranspose":
        return (1, 0) if int(node.attrs.get("group", 1)) == 1 else None
    if node.op == "Gemm":
        return (0, 1) if int(node.attrs.get("transB", 0)) else (1, 0)
    if node.op == "MatMul":
        return (weight.ndim - 1, weight.ndim - 2) if weight.ndim >= 2 else None
    return None


def find_targets(graph: gs.Graph, op_types, include, exclude) -> tuple[list[Target], list[dict]]:
    """(targets, skipped sites with a reason) in the main graph, in node order."""
    targets, skipped = [], []
    outputs = graph_queries.graph_output_ids(graph)
    for index, node in enumerate(graph.nodes):
        if node.op not in WEIGHT_OPS:
            continue
        name = node.name or f"{node.op}_{index}"
        reason = _refusal(node, name, op_types, include, exclude)
        if reason is None:
            weight = graph_queries.constant_value(node.inputs[1])
            axes = weight_axis(node, weight)
            if axes is None:
                reason = "weight layout not supported"
        if reason is not None:
            skipped.append({"node": name, "op": node.op, "reason": reason})
            continue
        relu = _single_relu(node.outputs[0], outputs)
        targets.append(Target(index, name, node.op, node.inputs[0].name, tuple(weight.shape), axes[0], axes[1],
                              relu_output=relu.outputs[0].name if relu is not None else None,
                              output=node.outputs[0].name, macs=_macs(node, weight), weight=node.inputs[1].name))
    return targets, skipped


def find_embeddings(graph: gs.Graph, include, exclude) -> list[gs.Node]:
    """Gathers along axis 0 from a 2-D float32 constant table (an embedding), in the main graph."""
    found = []
    for index, node in enumerate(graph.nodes):
        if node.op != "Gather" or int(node.attrs.get("axis", 0)) != 0:
            continue
        name = node.name or f"Gather_{index}"
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) or p == "Gather" for p in exclude):
            continue
        table = graph_queries.constant_value(node.inputs[0])
        if table is not None and table.dtype == np.float32 and table.ndim == 2 and table.size >= 1024:
            found.append(node)
    return found


def _refusal(node: gs.Node, name: str, op_types, include, exclude) -> str | None:
    if node.op not in op_types:
        return "op type not selected (op_types)"
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return "not matched by include"
    if any(fnmatch.fnmatchcase(name, pattern) or pattern == node.op for pattern in exclude):
        return "excluded"
    if len(node.inputs) < 2:
        return "no weight input"
    weight = graph_queries.constant_value(node.inputs[1])
    if weight is None or isinstance(node.inputs[0], gs.Constant):
        return "weight is not a constant (activation x activation)"
    if weight.dtype.kind != "f" or np.dtype(node.inputs[0].dtype or np.float32) != np.float32:
        return "not float32"
    if node.op == "Gemm" and (int(node.attrs.get("transA", 0)) or float(node.attrs.get("alpha", 1.0)) != 1.0
                              or float(node.attrs.get("beta", 1.0)) != 1.0):
        return "Gemm with transA/alpha/beta"
    return None


def _single_relu(tensor: gs.Tensor, graph_outputs: set[int]) -> gs.Node | None:
    readers = graph_queries.consumers(tensor)
    if id(tensor) in graph_outputs or len(readers) != 1 or readers[0].op != "Relu":
        return None
    return readers[0]


def _macs(node: gs.Node, weight: np.ndarray) -> int:
    """Multiply-accumulates per output element times the output's known size (0 when unknown)."""
    shape = node.outputs[0].shape
    if not shape or not all(isinstance(d, int) for d in shape):
        return 0
    elements = int(np.prod(shape))
    if node.op in ("Conv",):
        return elements * int(np.prod(weight.shape[1:]))
    if node.op == "ConvTranspose":
        return elements * int(np.prod(weight.shape[2:])) * weight.shape[0] // max(weight.shape[1], 1)
    return elements * int(weight.shape[1] if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else weight.shape[-2])
