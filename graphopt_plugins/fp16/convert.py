"""float32 → float16 on a graphsurgeon graph, with Casts at every fp32 boundary.

Which inputs and outputs of a node turn float16 comes from its ONNX schema: each type
constraint (`T`) that binds a float32 input, admits `tensor(float16)` and binds only float32
slots of known type switches, and with it every slot it binds. A slot of fixed type
(Resize's `scales`, always float32) stays, as does a constraint bound only to outputs (its type
comes from an attribute: Cast, RandomNormal, ConstantOfShape). A node whose outputs would not
switch only reads float16 where it is already there (Shape of an fp16 tensor).

A switched output gets a new float16 tensor; the original name is kept as a Cast back to
float32, which stays only where something still reads float32 — a kept node, a graph output,
an If/Loop/Scan body. So the interface and every fp32 reader are untouched. A float32 input
read as float16 comes through a Cast shared by its readers, or, for a weight or a Constant
node, as a float16 copy clamped to ±65504. A weight of at least `_STORED_HALF_MIN` values that a
node kept float32 reads (a blocked op, a node kept by name or by `auto`) is stored float16 too,
behind one Cast back to float32, when float16 holds every value exactly: lossless, half its bytes.

`restore_names` gives each float16 tensor its float32 original's name back once nothing reads the
original any more, so the conversion adds no name bytes (only its boundary Casts).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt.graph_queries import iter_graphs, node_subgraphs

__all__ = ["Conversion", "convert_graph", "has_float16", "restore_names", "FP16_MAX"]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
_STORED_HALF_MIN = 16  # below this a Cast node costs more bytes than the halving saves


@dataclasses.dataclass
class Conversion:
    """What a conversion did; `renamed` maps each switched main-graph output to its fp16 tensor."""

    nodes: int = 0
    weights: int = 0
    clamped_values: int = 0
    casts_in: int = 0
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)
    switched: list[int] = dataclasses.field(default_factory=list)  # main-graph node indices converted
    stored_half: int = 0  # float32 weights of kept nodes stored float16 (exactly) behind a Cast
    originals: list[tuple[gs.Tensor, str]] = dataclasses.field(default_factory=list)  # (float16 tensor, its original's name)


def has_float16(graph: gs.Graph) -> bool:
    """Whether any tensor of the main graph is float16 already (then the pass leaves it alone)."""
    return any(_is(tensor, np.float16) for tensor in graph.tensors().values())


def convert_graph(graph: gs.Graph, opset: int, block_ops: set[str], keep: set[int] = frozenset()) -> Conversion:
    """Converts `graph` (and its bodies) in place; `keep` holds main-graph node indices to leave fp32."""
    names: set[str] = set()
    for level in iter_graphs(graph, functions=False):
        names.update(level.tensors())
    conversion = Conversion()
    _convert_level(graph, opset, block_ops, keep, conversion, names, {}, main=True)
    return conversion


def _convert_level(graph: gs.Graph, opset: int, block_ops: set[str], keep: set[int], conversion: Conversion,
                   names: set[str], outer_half: dict[int, gs.Tensor], main: bool) -> None:
    """One graph level; `outer_half` maps the enclosing levels' fp32 tensors to their fp16 forms,
    which a body reads directly (names are unique across levels: a body may see every outer one)."""
    half: dict[int, gs.Tensor] = dict(outer_half)
    added: list[gs.Node] = []

    def unique(base: str) -> str:
        name, count = f"{base}_fp16", 1
        while name in names:
            name, count = f"{base}_fp16_{count}", count + 1
        names.add(name)
        return name

    def fp16_of(tensor: gs.Tensor) -> gs.Tensor:
        if id(tensor) in half:
            return half[id(tensor)]
        values = graph_queries.constant_value(tensor)
        if values is not None and values.dtype == np.float32:
            clipped = np.clip(np.asarray(values), -FP16_MAX, FP16_MAX)
            conversion.clamped_values += int(np.count_nonzero(clipped != values))
            made = gs.Constant(unique(tensor.name), np.asarray(clipped, dtype=np.float16))
            conversion.weights += 1
        else:
            made = gs.Variable(unique(tensor.name), dtype=np.float16, shape=tensor.shape)
            added.append(gs.Node("Cast", name=made.name + "_cast", attrs={"to": onnx.TensorProto.FLOAT16}, inputs=[tensor], outputs=[made]))
            conversion.casts_in += 1
        half[id(tensor)] = made
        if values is not None:
            conversion.originals.append((made, tensor.name))
        return made

    widened: dict[int, gs.Tensor] = {}

    def stored_half(tensor: gs.Tensor) -> gs.Tensor:
        """A kept node's float32 weight as Cast(float16 copy) when float16 holds it exactly."""
        if id(tensor) in widened:
            return widened[id(tensor)]
        values = graph_queries.constant_value(tensor)
        if (values is None or values.dtype != np.float32 or values.size < _STORED_HALF_MIN
                or not np.array_equal(np.asarray(values, np.float16).astype(np.float32), values)):
            return tensor
        made = gs.Variable(unique(tensor.name + "_stored"), dtype=np.float32, shape=list(values.shape))
        added.append(gs.Node("Cast", name=made.name + "_cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[fp16_of(tensor)], outputs=[made]))
        conversion.stored_half += 1
        widened[id(tensor)] = made
        return made

    for index, node in enumerate(list(graph.nodes)):
        for body in node_subgraphs(node) if node.attrs else ():
            _convert_level(body, opset, block_ops, frozenset(), conversion, names, half, main=False)
        inputs, outputs = ([], []) if main and index in keep else _switched_slots(node, opset, block_ops)
        if not outputs:
            for slot in inputs:  # read fp16 only where it is there already
                if id(node.inputs[slot]) in half:
                    node.inputs[slot] = half[id(node.inputs[slot])]
            for slot, tensor in enumerate(node.inputs):
                if slot not in inputs and tensor.name and _is(tensor, np.float32):
                    node.inputs[slot] = stored_half(tensor)
            continue
        for slot in inputs:
            node.inputs[slot] = fp16_of(node.inputs[slot])
        for slot in outputs:
            old = node.outputs[slot]
            new = gs.Variable(unique(old.name), dtype=np.float16, shape=old.shape)
            node.outputs[slot] = new
            added.append(gs.Node("Cast", name=new.name + "_back", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[new], outputs=[old]))
            half[id(old)] = new
            conversion.originals.append((new, old.name))
            if main:
                conversion.renamed[old.name] = new.name
        conversion.nodes += 1
        if main:
            conversion.switched.append(index)
    graph.nodes.extend(added)


def restore_names(graph: gs.Graph, conversion: Conversion) -> int:
    """Renames each float16 tensor to its original's name where no level of `graph` still has a
    tensor of that name (run after dead nodes are removed); returns how many were renamed."""
    taken: set[str] = set()
    for level in iter_graphs(graph, functions=False):
        taken.update(level.tensors())
    restored = 0
    for tensor, original in conversion.originals:
        if original not in taken and tensor.name in taken:
            taken.discard(tensor.name)
            tensor.name = original
            taken.add(original)
            restored += 1
    return restored


def _switched_slots(node: gs.Node, opset: int, block_ops: set[str]) -> tuple[list[int], list[int]]:
    """(input slots, output slots) that turn float16, by the node's schema's type constraints."""
    if (node.domain or "") not in ("", "ai.onnx") or node.op in block_ops or (node.attrs and node_subgraphs(node)):
        return [], []
    schema = _schema(node.op, opset)
    if schema is None:
        return [], []
    allowed, input_params, output_params = schema
    bound: dict[str, list[tuple[str, int, gs.Tensor]]] = {}
    for kind, tensors, params in (("in", node.inputs, input_params), ("out", node.outputs, output_params)):
        for slot, tensor in enumerate(tensors):
            if not params or not tensor.name:  # an omitted optional input
                continue
            param = params[min(slot, len(params) - 1)]
            bound.setdefault(param, []).append((kind, slot, tensor))
    inputs, outputs = [], []
    for param, slots in bound.items():
        if "tensor(float16)" not in allowed.get(param, ()) or not any(kind == "in" for kind, _, _ in slots):
            continue
        if not all(_is(tensor, np.float32) for _, _, tensor in slots):
            continue  # unknown or other types: leave the constraint as it is
        inputs += [slot for kind, slot, _ in slots if kind == "in"]
        outputs += [slot for kind, slot, _ in slots if kind == "out"]
    return inputs, outputs


@functools.cache
def _schema(op: str, opset: int):
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: tuple(c.allowed_type_strs) for c in schema.type_constraints}
    return allowed, tuple(p.type_str for p in schema.inputs), tuple(p.type_str for p in schema.outputs)


def _is(tensor: gs.Tensor, dtype) -> bool:
    if tensor.dtype is None:
        return False
    try:
        return np.dtype(tensor.dtype) == dtype
    except TypeError:
        return False
