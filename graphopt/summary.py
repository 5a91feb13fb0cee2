"""What a model is made of: nodes, op histogram, parameters, bytes, MACs, opsets, inputs/outputs.

MACs are counted for the ops that dominate compute (Conv, ConvTranspose, Gemm, MatMul, and the
recurrent LSTM, GRU, RNN) from the shapes shape inference found; an op whose shapes are unknown counts as zero and is named in
`macs_unknown`, so a partial count never passes for a full one. Control flow counts what one run
can cost: an If its costlier branch, a Loop its body times a constant trip count, a Scan its body
times the scanned axis; a Loop whose trip count is not a constant counts its body once and is named
in `macs_unknown`.
"""

from __future__ import annotations

import collections
import math

import onnx

from onnx import external_data_helper

from graphopt.latency import energy
from graphopt.proto_walk import iter_graph_protos, iter_tensors, tensor_nbytes

__all__ = ["summarize", "counted_figures", "COUNTED_KEYS", "format_comparison", "model_bytes", "MAC_OPS"]

# What `summarize` reads from inferred shapes (the energy estimate's figures but the weight bytes, and the MACs).
COUNTED_KEYS = ("macs_by_dtype", "macs_uncounted_nodes", "peak_activation_bytes", "activations_unsized", "energy_proxy",
                "macs", "macs_unknown")


def summarize(model: onnx.ModelProto, *, size: int | None = None, size_of: onnx.ModelProto | None = None,
              count: bool = True) -> dict:
    """The summary of `model`; `bytes` is `size` when the caller knows it, else measured on
    `size_of` (the model as stored, where `model` is its shape-inferred copy, whose value_info
    would inflate the count). `count=False` leaves the figures read from shapes (`COUNTED_KEYS`)
    None, for a caller that counts them at concrete input shapes (`shaped_summary.count_macs_at`).
    """
    tensors = list(iter_tensors(model))
    weight_bytes = int(sum(tensor_nbytes(t) for t in tensors))
    counted = counted_figures(model, weight_bytes=weight_bytes) if count else dict.fromkeys(COUNTED_KEYS)
    ops = collections.Counter(node.op_type if not node.domain or node.domain == "ai.onnx" else f"{node.domain}.{node.op_type}"
                              for graph in iter_graph_protos(model.graph) for node in graph.node)
    initializer_names = {t.name for t in model.graph.initializer}
    # The energy estimate's keys first, as they always came (reports are compared as text).
    return {**{key: weight_bytes if key == "weight_bytes" else counted[key] for key in energy.ESTIMATE_KEYS},
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        # Constant nodes count too: some exporters (paddle2onnx) keep every weight in one.
        "parameters": sum(math.prod(t.dims) for t in tensors),
        "bytes": size if size is not None else model_bytes(size_of if size_of is not None else model),
        "macs": counted["macs"],
        "macs_unknown": counted["macs_unknown"],
        "opset": {entry.domain or "ai.onnx": entry.version for entry in model.opset_import},
        "ir_version": model.ir_version,
        "inputs": [_describe_value(v) for v in model.graph.input if v.name not in initializer_names],
        "outputs": [_describe_value(v) for v in model.graph.output],
        "functions": len(model.functions),
    }


def counted_figures(model: onnx.ModelProto, *, weight_bytes: int | None = None) -> dict:
    """The figures of `summarize` read from `model`'s inferred shapes (`COUNTED_KEYS`); `weight_bytes`
    when the caller has summed them already (the energy proxy prices them)."""
    figures = energy.estimate(model, weight_bytes=weight_bytes)
    macs, unknown = _graph_macs(model.graph, _known_shapes(model), _scalar_constants(model.graph))
    return {**{key: figures[key] for key in COUNTED_KEYS[:-2]}, "macs": int(macs), "macs_unknown": dict(unknown)}


def format_comparison(before: dict, after: dict) -> str:
    """A plain-text before/after table for the terminal."""
    rows = [("nodes", before["nodes"], after["nodes"]), ("parameters", before["parameters"], after["parameters"]),
            ("bytes", before["bytes"], after["bytes"]), ("MACs", before["macs"], after["macs"])]
    rows += energy_rows(before, after)
    # Wide enough for the largest figure (energy in pJ runs to 13+ digits) plus a gap.
    width = max(14, *(len(f"{value:,}") + 2 for _, old, new in rows for value in (old, new)))
    lines = [f"{'':<16}{'before':>{width}}{'after':>{width}}{'change':>10}"]
    for label, old, new in rows:
        change = f"{(new - old) / old:+.1%}" if old else ""
        lines.append(f"{label:<16}{old:>{width},}{new:>{width},}{change:>10}")
    if "energy_proxy" in after:
        lines.append("  * relative energy proxy (45 nm per-operation table, weights read from DRAM), not joules")
    ops = sorted(set(before["ops"]) | set(after["ops"]), key=lambda op: (-before["ops"].get(op, 0), op))
    lines.append("ops:")
    for op in ops:
        old, new = before["ops"].get(op, 0), after["ops"].get(op, 0)
        marker = "" if old == new else f"{new - old:+d}"
        lines.append(f"  {op:<26}{old:>6}{new:>8}{marker:>8}")
    return "\n".join(lines)


def energy_rows(before: dict, after: dict) -> list[tuple[str, int, int]]:
    """The energy and memory rows of the before/after table, for the summaries that carry them."""
    if "energy_proxy" not in before or "energy_proxy" not in after:
        return []
    rows = [(f"MACs {kind}", before["macs_by_dtype"][kind], after["macs_by_dtype"][kind]) for kind in energy.DTYPES
            if before["macs_by_dtype"][kind] or after["macs_by_dtype"][kind]]
    rows += [("weight bytes", before["weight_bytes"], after["weight_bytes"]),
             ("peak act. bytes", before["peak_activation_bytes"], after["peak_activation_bytes"]),
             ("energy* pJ", round(before["energy_proxy"]["total_pj"]), round(after["energy_proxy"]["total_pj"]))]
    return rows


def model_bytes(model: onnx.ModelProto) -> int:
    """The stored size of `model`: its serialised size plus the weights it keeps in data files."""
    external = sum(tensor_nbytes(t) for t in iter_tensors(model) if external_data_helper.uses_external_data(t))
    try:
        return model.ByteSize() + external
    except Exception:  # noqa: BLE001 - over 2 GiB protobuf refuses; weights dominate anyway
        return sum(tensor_nbytes(t) for t in iter_tensors(model))


def _graph_macs(graph: onnx.GraphProto, shapes: dict, constants: dict[str, int]) -> tuple[int, collections.Counter]:
    macs, unknown = 0, collections.Counter()
    for node in graph.node:
        bodies = [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]
        if not bodies:
            count = _node_macs(node, shapes)
            if count is None:
                unknown[node.op_type] += 1
            else:
                macs += count
            continue
        counted = [_graph_macs(body, shapes, constants) for body in bodies]
        for _, body_unknown in counted:
            unknown.update(body_unknown)
        body_macs = max(count for count, _ in counted) if node.op_type == "If" else sum(count for count, _ in counted)
        repeats = _iterations(node, shapes, constants)
        if repeats is None and body_macs:
            unknown[node.op_type] += 1
        macs += body_macs * (1 if repeats is None else repeats)
    return macs, unknown


def _iterations(node: onnx.NodeProto, shapes: dict, constants: dict[str, int]) -> int | None:
    """How many times `node` runs its body: 1 for If, None when that is not known before running."""
    if node.op_type == "If":
        return 1
    if node.op_type == "Loop":
        return constants.get(node.input[0]) if node.input and node.input[0] else None
    if node.op_type == "Scan":
        count = next((attr.i for attr in node.attribute if attr.name == "num_scan_inputs"), 0)
        axes = next((list(attr.ints) for attr in node.attribute if attr.name == "scan_input_axes"), [0] * count)
        first = shapes.get(node.input[len(node.input) - count]) if count else None
        axis = axes[0] if axes else 0
        return first[axis] if first and -len(first) <= axis < len(first) and isinstance(first[axis], int) else None
    return None


def _scalar_constants(graph: onnx.GraphProto) -> dict[str, int]:
    """Integer scalars of the main graph (Loop trip counts), from initializers and Constant nodes."""
    found = {}
    tensors = [(t.name, t) for t in graph.initializer if not t.dims]
    tensors += [(node.output[0], attr.t) for node in graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value" and not attr.t.dims]
    for name, tensor in tensors:
        if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            found[name] = int(onnx.numpy_helper.to_array(tensor))
    return found


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes of the tensors the MAC-counted ops and the Scans read or write, in every graph
    (only those: reading every value_info's dims through protobuf costs seconds on a 100k-node graph)."""
    graphs = list(iter_graph_protos(model.graph))
    wanted: set[str] = set()
    for graph in graphs:
        for node in graph.node:
            if node.op_type in _SHAPES_READ_BY:
                wanted.update(node.input)
                wanted.update(node.output[:1])
    shapes = {}
    if not wanted:
        return shapes
    for graph in graphs:
        for values in (graph.input, graph.value_info, graph.output):
            for value in values:
                if value.name in wanted and value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                    shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        for tensor in graph.initializer:
            if tensor.name in wanted:
                shapes[tensor.name] = list(tensor.dims)
    return shapes


MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN")
_SHAPES_READ_BY = frozenset({*MAC_OPS, "Scan"})  # the ops whose tensors' shapes `_known_shapes` reads
# Gates per recurrent op: each step multiplies the input by W and the hidden state by R, per gate.
_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _node_macs(node: onnx.NodeProto, shapes: dict) -> int | None:
    if node.op_type not in MAC_OPS:
        return 0
    def static(name):
        shape = shapes.get(name)
        return shape if shape is not None and all(isinstance(d, int) and d > 0 for d in shape) else None
    output = static(node.output[0]) if node.output else None
    if node.op_type in _RECURRENT_GATES:
        return _recurrent_macs(node, static)
    if node.op_type == "Conv":
        weight = static(node.input[1])
        return math.prod(output) * math.prod(weight[1:]) if output and weight else None
    if node.op_type == "ConvTranspose":
        source, weight = static(node.input[0]), static(node.input[1])
        return math.prod(source) * math.prod(weight[1:]) if source and weight else None
    if node.op_type == "Gemm":
        a = static(node.input[0])
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(output) * (a[0] if trans_a else a[1]) if output and a and len(a) == 2 else None
    a = static(node.input[0])
    return math.prod(output) * a[-1] if output and a else None


def _recurrent_macs(node: onnx.NodeProto, static) -> int | None:
    """X (seq, batch, input) · W (dirs, gates·hidden, input) + H · R (dirs, gates·hidden, hidden), every step."""
    source, weight, recurrence = (static(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(3))
    if not (source and weight and recurrence) or len(source) != 3:
        return None
    layout = next((attr.i for attr in node.attribute if attr.name == "layout"), 0)
    steps, batch = (source[1], source[0]) if layout else (source[0], source[1])
    directions, gate_rows = weight[0], weight[1]
    return steps * batch * directions * gate_rows * (weight[2] + recurrence[2])


def _describe_value(value: onnx.ValueInfoProto) -> dict:
    tensor_type = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else None
    except (KeyError, TypeError):
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    return {"name": value.name, "dtype": dtype, "shape": shape if tensor_type.HasField("shape") else None}
