"""Full-graph int8: which activation-only ops join the quantized layers, and on which scales.

A QuantizeLinear/DequantizeLinear pair around each input and output of an activation-only op
lets onnxruntime's QDQ transformer run it in 8 bits too, so that no float island between two
QLinearConv forces a dequantize + requantize. onnxruntime (CPU) turns the pattern
`DQ -> op -> Q` into:
- `QLinearSigmoid`, `QLinearLeakyRelu`, `QLinearAveragePool`, `QLinearGlobalAveragePool`
  (one input), `QLinearAdd`, `QLinearMul` (two inputs, each on its own scale), `QLinearConcat`;
- the op itself run on the 8-bit tensor (Q/DQ dropped) for Reshape, Transpose, Squeeze,
  Unsqueeze, Gather, MaxPool, Resize and Split, but only when input and outputs carry the *same*
  scale and zero point, so those tensors form one scale group here.
SiLU (`x * Sigmoid(x)`) becomes QLinearSigmoid + QLinearMul; a C2f block's Split and Concat and
an SPPF's MaxPools stay 8-bit.

An op joins only when every data input is already 8-bit (the output of a quantized layer or of
an op that joined): a region grows forward from the quantized layers and stops at the first op
onnxruntime cannot run in 8 bits (Tanh, Exp, Slice...) or an Add/Mul with a constant operand
(a detector's box decoding: grid offsets and strides in pixels stay float).

Concat's inputs share the output's scale (a plain copy) unless one input's range is much
smaller than the others' (`_CRUSH`): class scores in [0, 1] concatenated with box coordinates
in pixels would keep ~1 of their 256 levels, so such an input keeps its own scale and
QLinearConcat requantizes it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from graphopt_plugins.quantize.numerics import activation_params

__all__ = ["Region", "find_region", "shared_ranges", "insert_pairs", "REGION_OPS"]

SAME_SCALE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "MaxPool", "Resize", "Split"})
QLINEAR_OPS = frozenset({"Sigmoid", "LeakyRelu", "AveragePool", "GlobalAveragePool", "Add", "Mul", "Concat"})
REGION_OPS = SAME_SCALE_OPS | QLINEAR_OPS
_BINARY = frozenset({"Add", "Mul"})
# An input whose range is narrower than 1/_CRUSH of a Concat's joint range keeps its own scale.
_CRUSH = 8.0


@dataclasses.dataclass
class Region:
    nodes: list[gs.Node]  # activation-only nodes run in 8 bits, in graph order
    tensors: list[str]  # every tensor that gets (or already has) a Q/DQ pair
    same_scale: list[tuple[str, ...]]  # tensors that must carry one scale (dropped-QDQ ops)
    concats: list[tuple[tuple[str, ...], str]]  # (inputs, output) of each 8-bit Concat


def _data_inputs(node: gs.Node) -> list[gs.Tensor]:
    if node.op in ("Concat", "Add", "Mul"):
        return list(node.inputs)
    return list(node.inputs[:1])


def _is_float(tensor: gs.Tensor) -> bool:
    return tensor.dtype is None or np.dtype(tensor.dtype) == np.float32


def find_region(graph: gs.Graph, quantized_outputs: set[str]) -> Region:
    """The activation-only nodes reachable in 8 bits from `quantized_outputs` (tensor names)."""
    available = set(quantized_outputs)
    nodes, tensors, same, concats = [], [], [], []
    for node in graph.nodes:
        if node.op not in REGION_OPS or not node.outputs:
            continue
        data = _data_inputs(node)
        if not data or any(isinstance(t, gs.Constant) or t.name not in available for t in data):
            continue
        if node.op == "MaxPool" and len(node.outputs) > 1:
            continue  # the indices output has no 8-bit form
        if node.op in _BINARY and len(data) != 2:
            continue
        outputs = [t for t in node.outputs if _is_float(t)]
        if len(outputs) != len(node.outputs):
            continue
        nodes.append(node)
        names = [t.name for t in data] + [t.name for t in outputs]
        tensors.extend(names)
        available.update(t.name for t in outputs)
        if node.op in SAME_SCALE_OPS:
            same.append(tuple(names))
        elif node.op == "Concat":
            concats.append((tuple(t.name for t in data), outputs[0].name))
    return Region(nodes, list(dict.fromkeys(tensors)), same, concats)


def shared_ranges(ranges: dict[str, tuple[float, float]], region: Region) -> dict[str, tuple[float, float]]:
    """`ranges` with each scale group widened to the union of its members' ranges."""
    parent: dict[str, str] = {}
    extent: dict[str, tuple[float, float]] = {}  # per group root: the union of its members' ranges

    def root(name: str) -> str:
        if name not in parent:
            parent[name] = name
            low, high = ranges[name]
            extent[name] = (min(low, 0.0), max(high, 0.0))
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def join(a: str, b: str) -> None:
        a, b = root(a), root(b)
        if a != b:
            parent[a] = b
            extent[b] = (min(extent[a][0], extent[b][0]), max(extent[a][1], extent[b][1]))

    for group in region.same_scale:
        for name in group[1:]:
            join(name, group[0])
    for inputs, output in region.concats:
        lows, highs = zip(*(extent[root(name)] for name in (*inputs, output)))
        width = max(highs) - min(lows)
        for name in inputs:
            own_low, own_high = extent[root(name)]
            if width <= 0 or (own_high - own_low) * _CRUSH >= width:
                join(name, output)
    merged = dict(ranges)
    for name in list(parent):
        merged[name] = extent[root(name)]
    return merged


def insert_pairs(graph: gs.Graph, region: Region, ranges: dict, signed: bool, names) -> int:
    """One Q -> DQ pair on every region tensor that has none; the DQ keeps the tensor's name.

    A tensor that a quantized layer already reads through its own Q/DQ twin (`rewrite.apply_static`
    quantizes a layer's input that way) loses the twin: its readers take the shared pair instead,
    so a tensor is quantized once.
    """
    by_name = graph.tensors()
    added = 0
    for name in region.tensors:
        tensor = by_name[name]
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None or producer.op == "DequantizeLinear":
            continue
        scale, zero = activation_params(*ranges[name], signed)
        raw = gs.Variable(names(f"{name}_float"), dtype=tensor.dtype, shape=tensor.shape)
        producer.outputs[producer.outputs.index(tensor)] = raw
        quantized = gs.Variable(names(f"{name}_quantized"), dtype=zero.dtype, shape=tensor.shape)
        twins = [reader for reader in tensor.outputs if reader.op == "QuantizeLinear"]
        graph.nodes.append(gs.Node("QuantizeLinear", names(f"{name}_Q"), inputs=[
            raw, gs.Constant(names("scale"), scale), gs.Constant(names("zero_point"), zero)], outputs=[quantized]))
        graph.nodes.append(gs.Node("DequantizeLinear", names(f"{name}_DQ"), inputs=[
            quantized, gs.Constant(names("scale"), scale), gs.Constant(names("zero_point"), zero)], outputs=[tensor]))
        for twin in twins:
            _drop_twin(graph, twin, tensor)
        added += 1
    return added


def _drop_twin(graph: gs.Graph, quantize: gs.Node, tensor: gs.Variable) -> None:
    """Readers of `tensor -> Q -> DQ -> twin` read `tensor` (now itself dequantized) instead."""
    dequantizers = [n for n in quantize.outputs[0].outputs if n.op == "DequantizeLinear"]
    if len(dequantizers) != len(quantize.outputs[0].outputs):
        return
    for dq in dequantizers:
        twin = dq.outputs[0]
        for reader in list(twin.outputs):
            reader.inputs[reader.inputs.index(twin)] = tensor
        dq.inputs.clear()
        dq.outputs.clear()
        graph.nodes.remove(dq)
    quantize.inputs.clear()
    quantize.outputs.clear()
    graph.nodes.remove(quantize)
