"""An energy and memory estimate: MACs by dtype, weight bytes, peak activation bytes, a relative energy proxy.

The proxy prices one inference with a per-operation table at 45 nm (M. Horowitz, "Computing's
energy problem", ISSCC 2014): a multiply-accumulate costs one multiply and one add of its
dtype, and every weight is read once from DRAM at 640 pJ per 32-bit word (S. Han et al.,
"Learning both weights and connections", NeurIPS 2015). Activations are assumed to stay in
on-chip memory and are not priced (their peak is reported separately). int4 is not in
Horowitz's table: its figures are extrapolated from int8 (multiply ÷ 4, add ÷ 2). It is a
*relative* proxy for comparing a model with its optimized form on one table, not joules a
device would draw. Pass another `table` to price a different process or memory.

A MAC's dtype is what its two operands are stored as where it runs: a Conv/Gemm/MatMul
reading two DequantizeLinear outputs (a QDQ model), or a QLinear*/*Integer op, multiplies
8-bit integers; a weight-only quantized MatMul still multiplies floats (its weight read is
what shrinks). Only the main graph is counted; If/Loop bodies are not (they may not run).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import onnx

from graphopt.proto_walk import iter_tensors, tensor_nbytes

__all__ = ["estimate", "ESTIMATE_KEYS", "DEFAULT_TABLE", "TABLE_SOURCE"]

TABLE_SOURCE = "Horowitz ISSCC 2014 (45 nm) per operation; DRAM per 32-bit word from Han et al. 2015; int4 extrapolated"
# picojoules per operation
DEFAULT_TABLE: dict[str, float] = {
    "fp32_mult": 3.7, "fp32_add": 0.9,
    "fp16_mult": 1.1, "fp16_add": 0.4,
    "int8_mult": 0.2, "int8_add": 0.03,
    "int4_mult": 0.05, "int4_add": 0.015,
    "dram_32bit_word": 640.0,
}
DTYPES = ("fp32", "fp16", "int8", "int4")
# The keys of `estimate`, in order.
ESTIMATE_KEYS = ("macs_by_dtype", "macs_uncounted_nodes", "weight_bytes", "peak_activation_bytes", "activations_unsized",
                 "energy_proxy")
_T = onnx.TensorProto
_KIND = {_T.FLOAT: "fp32", _T.DOUBLE: "fp32", _T.FLOAT16: "fp16", _T.BFLOAT16: "fp16", _T.INT8: "int8", _T.UINT8: "int8",
         _T.INT4: "int4", _T.UINT4: "int4", _T.INT16: "int8", _T.UINT16: "int8"}
_WIDTH = {"int4": 0, "int8": 1, "fp16": 2, "fp32": 3}
# op: (index of operand A, index of operand B) of the multiplications it makes
_MAC_OPERANDS = {"Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1), "QLinearConv": (0, 3),
                 "QLinearMatMul": (0, 3), "ConvInteger": (0, 1), "MatMulInteger": (0, 1), "QGemm": (0, 3),
                 "DynamicQuantizeMatMul": (0, 1), "MatMulIntegerToFloat": (0, 1), "FusedConv": (0, 1), "FusedMatMul": (0, 1)}


def estimate(model: onnx.ModelProto, table: Mapping[str, float] | None = None, *, weight_bytes: int | None = None) -> dict:
    """The estimate of one inference of `model` (shapes from its value_info: pass a shape-inferred model).

    `weight_bytes`: the bytes of `model`'s weights, when the caller has summed them already.
    """
    table = {**DEFAULT_TABLE, **(table or {})}
    types = _tensor_types(model)
    # Read once: each pass over the protobuf nodes makes their wrappers and field views anew.
    nodes = list(model.graph.node)
    op_types = [node.op_type for node in nodes]
    dequantized = {node.output[0]: node.input[0] for node, op in zip(nodes, op_types) if op == "DequantizeLinear"}
    macs = dict.fromkeys(DTYPES, 0)
    unknown = 0
    for node, op in zip(nodes, op_types):
        if op not in _MAC_OPERANDS:
            continue
        count = _node_macs(node, types)
        if count is None:
            unknown += 1
            continue
        kind = _mac_kind(node, types, dequantized)
        macs[kind] += count
    if weight_bytes is None:
        weight_bytes = int(sum(tensor_nbytes(t) for t in iter_tensors(model)))
    compute = sum(macs[kind] * (table[f"{kind}_mult"] + table[f"{kind}_add"]) for kind in DTYPES)
    memory = weight_bytes / 4 * table["dram_32bit_word"]
    peak, unsized = _peak_activation_bytes(model, types, nodes, op_types)
    return {
        "macs_by_dtype": macs,
        "macs_uncounted_nodes": unknown,
        "weight_bytes": weight_bytes,
        "peak_activation_bytes": peak,
        "activations_unsized": unsized,
        "energy_proxy": {"compute_pj": round(compute, 3), "weight_dram_pj": round(memory, 3), "total_pj": round(compute + memory, 3),
                         "note": "relative proxy, not joules: " + TABLE_SOURCE},
    }


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, list[int] | None]]:
    """`{name: (elem_type, shape or None)}` of the main graph's tensors; an unknown dim is 0,
    which every reader here takes as unknown, as it does a 0-sized dim (`_static`).

    A dim's `dim_value` is read without asking `HasField` first: this walks every value_info
    of the graph, several times a run.
    """
    found: dict[str, tuple[int, list | None]] = {}
    graph = model.graph
    for values in (graph.input, graph.value_info, graph.output):
        for value in values:
            value_type = value.type
            if not value_type.HasField("tensor_type"):
                continue
            tensor_type = value_type.tensor_type
            shape = [d.dim_value for d in tensor_type.shape.dim] if tensor_type.HasField("shape") else None
            found[value.name] = (tensor_type.elem_type, shape)
    for tensor in graph.initializer:
        found[tensor.name] = (tensor.data_type, list(tensor.dims))
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = (node.attribute[0].t.data_type, list(node.attribute[0].t.dims))
    return found


def _static(types, name) -> list[int] | None:
    # Every dim `_tensor_types` gives is an int: the least of them tells whether all are sizes.
    shape = types.get(name, (0, None))[1]
    return shape if shape is not None and (not shape or min(shape) > 0) else None


def _node_macs(node: onnx.NodeProto, types) -> int | None:
    a_index, b_index = _MAC_OPERANDS[node.op_type]
    output, a, b = _static(types, node.output[0]), _static(types, node.input[a_index]), _static(types, node.input[b_index])
    op = node.op_type
    if op in ("Conv", "QLinearConv", "ConvInteger", "FusedConv"):
        return math.prod(output) * math.prod(b[1:]) if output and b else None
    if op == "ConvTranspose":
        return math.prod(a) * math.prod(b[1:]) if a and b else None
    if op in ("Gemm", "QGemm"):
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(output) * (a[0] if trans_a else a[1]) if output and a and len(a) == 2 else None
    return math.prod(output) * a[-1] if output and a else None


def _mac_kind(node: onnx.NodeProto, types, dequantized: dict[str, str]) -> str:
    """The wider of the two operands' stored kinds (a DequantizeLinear output counts as its input's)."""
    kinds = []
    for index in _MAC_OPERANDS[node.op_type]:
        name = node.input[index]
        source = dequantized.get(name, name)
        kinds.append(_KIND.get(types.get(source, (_T.FLOAT, None))[0], "fp32"))
    return max(kinds, key=_WIDTH.__getitem__)


def _peak_activation_bytes(model: onnx.ModelProto, types, nodes, op_types) -> tuple[int, int]:
    """(the most activation bytes alive at once running the nodes in order, tensors of unknown size).

    A tensor lives from the node that makes it (graph inputs: from the start) to its last reader
    (graph outputs: to the end); weights and Constant values are not activations.
    """
    graph = model.graph
    nodes = [(op, tuple(node.input), tuple(node.output)) for node, op in zip(nodes, op_types)]
    constants = {t.name for t in graph.initializer} | {outputs[0] for op, _, outputs in nodes if op == "Constant"}
    last_use: dict[str, int] = {}
    for index, (_, inputs, _) in enumerate(nodes):
        last_use.update(dict.fromkeys(inputs, index))
    end = len(nodes)
    for value in graph.output:
        last_use[value.name] = end
    unsized = 0

    def size(name: str) -> int:
        nonlocal unsized
        elem, _ = types.get(name, (0, None))
        shape = _static(types, name)
        if shape is None or not elem:
            unsized += 1
            return 0
        return math.prod(shape) * _itemsize(elem)

    live = {value.name: size(value.name) for value in graph.input if value.name not in constants}
    current = peak = sum(live.values())
    for index, (op, inputs, outputs) in enumerate(nodes):
        if op == "Constant":
            continue
        for name in outputs:
            if name and name not in live:
                live[name] = size(name)
                current += live[name]
        peak = max(peak, current)
        for name in inputs + outputs:  # a name twice: popped the first time, not found the second
            if name in live and last_use.get(name, -1) <= index:
                current -= live.pop(name)
    return peak, unsized


@functools.cache
def _itemsize(elem: int) -> int:
    if elem in (_T.INT4, _T.UINT4):
        return 1
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
    except (KeyError, TypeError, ValueError):
        return 4
