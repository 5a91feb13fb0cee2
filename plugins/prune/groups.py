"""Channel dependency groups: which output channels must be removed together, and where.

Removing output channel `c` of a Conv/ConvTranspose/Gemm/MatMul shrinks every tensor that
carries channel `c` on to the layers that finally mix channels (the *sinks*: the next
Conv/Gemm/MatMul, whose input rows are removed). Along the way per-channel parameters (BN,
per-channel constants, depthwise kernels) shrink too, and tensors joined by an elementwise op
(a residual Add, an SE Mul) must drop the same channels, which pulls their producers in.

The search walks channel *slots*: a slot is a tensor with the axis carrying the channels, the
offset of the group's first channel on that axis (Concat stacks groups at offsets), and a
block (a Flatten turns channel `c` into features `[c*block, (c+1)*block)`). Slots coupled by a
node become edges of a networkx graph; a group is a connected component grown from one root.
A group reaching anything whose channel semantics are unknown (a graph output, a Reshape that
mixes channels, a Gather, a Softmax over channels, a Split, a subgraph…) is returned with the
reason and must be skipped.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir

__all__ = ["Slot", "Edit", "Sink", "Group", "find_groups", "prunable_layer"]

# Ops that act on each channel alone, reading one tensor (extra inputs must be scalars).
_PER_CHANNEL = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Gelu", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity",
    "Dropout", "Cast", "Floor", "Ceil", "Round", "Mish", "ThresholdedRelu", "Sign",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample", "Pad",
}
# Elementwise with broadcasting: every input carrying the channels joins the group.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean"}
_PER_CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1"}


@dataclasses.dataclass
class Slot:
    tensor: gs.Tensor
    axis: int  # negative: counted from the last dimension, as broadcasting aligns
    offset: int
    block: int = 1


@dataclasses.dataclass
class Edit:
    """Channels to delete from a constant input of `node`: axis of the constant, offset, block."""

    node: gs.Node
    index: int
    axis: int
    offset: int
    block: int = 1


@dataclasses.dataclass
class Sink:
    """A layer reading the group's channels as features: its weight loses input rows."""

    node: gs.Node
    slot: Slot
    weight: np.ndarray | None = None  # its weight before pruning, kept for the refit


@dataclasses.dataclass
class Group:
    size: int
    roots: list[tuple[gs.Node, int]] = dataclasses.field(default_factory=list)  # (layer, channel offset)
    slots: list[Slot] = dataclasses.field(default_factory=list)
    edits: dict[tuple, Edit] = dataclasses.field(default_factory=dict)
    sinks: list[Sink] = dataclasses.field(default_factory=list)
    depthwise: list[gs.Node] = dataclasses.field(default_factory=list)
    reason: str | None = None
    coupling: nx.Graph | None = None  # slots as vertices, one edge per node that couples two
    reshapes: list[tuple[gs.Node, int]] = dataclasses.field(default_factory=list)  # (flattening Reshape, features per channel)
    name: str = ""


class _Unsafe(Exception):
    pass


def prunable_layer(node: gs.Node) -> tuple[int, int] | None:
    """(weight input index, output-channel axis of the weight) of a layer whose outputs can be removed."""
    if node.op in ("Conv", "ConvTranspose") and len(node.inputs) >= 2 and node.attrs.get("group", 1) == 1:
        weight = ir.constant_value(node.inputs[1])
        if weight is not None and weight.ndim >= 3:
            return 1, 0 if node.op == "Conv" else 1
    if node.op == "Gemm" and len(node.inputs) >= 2 and not node.attrs.get("transA", 0):
        weight = ir.constant_value(node.inputs[1])
        if weight is not None and weight.ndim == 2:
            return 1, 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul":
        weight = ir.constant_value(node.inputs[1])
        if weight is not None and weight.ndim == 2 and ir.constant_value(node.inputs[0]) is None:
            return 1, 1
    return None


def find_groups(graph: gs.Graph) -> list[Group]:
    """Every dependency group of the main graph, roots in topological order; unsafe ones carry a reason."""
    graph.toposort(mode="nodes")
    main = {id(node) for node in graph.nodes}
    outputs = ir.graph_output_ids(graph)
    claimed: set[tuple[int, int]] = set()
    groups = []
    for node in graph.nodes:
        layer = prunable_layer(node)
        if layer is None or (id(node), 0) in claimed or len(node.outputs) != 1:
            continue
        size = ir.constant_value(node.inputs[layer[0]]).shape[layer[1]]
        group = _Search(size, main, outputs).grow(node)
        group.name = node.name or node.outputs[0].name
        claimed.update((id(root), offset) for root, offset in group.roots)
        groups.append(group)
    return groups


class _Search:
    def __init__(self, size: int, main: set[int], outputs: set[int]):
        self.group = Group(size=size)
        self.main = main
        self.outputs = outputs
        self.coupling = nx.Graph()  # slot keys, an edge per coupling node: the group is one component
        self.queue: deque[tuple[Slot, tuple]] = deque()

    def grow(self, root: gs.Node) -> Group:
        if root.op.startswith("Conv"):
            axis = 1 - ir.constant_value(root.inputs[1]).ndim  # NC…: the output has the kernel's rank
        else:
            axis = -1
        start = Slot(root.outputs[0], axis, 0)
        try:
            self._join(start, None)
            while self.queue:
                slot, _ = self.queue.popleft()
                self._visit(slot)
        except _Unsafe as reason:
            self.group.reason = str(reason)
        self.group.coupling = self.coupling
        return self.group

    def _join(self, slot: Slot, via) -> None:
        key = _key(slot)
        if via is not None:
            self.coupling.add_edge(via, key)
        if key in {_key(s) for s in self.group.slots}:
            return
        self.coupling.add_node(key)
        channels = _channels(slot)
        if channels is None:
            raise _Unsafe(f"channel count of '{slot.tensor.name}' unknown")
        if slot.offset + self.group.size * slot.block > channels:
            raise _Unsafe(f"'{slot.tensor.name}' has fewer channels than the group")
        self.group.slots.append(slot)
        self.queue.append((slot, key))

    def _visit(self, slot: Slot) -> None:
        tensor = slot.tensor
        if id(tensor) in self.outputs:
            raise _Unsafe(f"reaches graph output '{tensor.name}'")
        source = ir.producer(tensor)
        if source is None:
            raise _Unsafe(f"reaches graph input '{tensor.name}'")
        self._backward(source, slot)
        for node in ir.consumers(tensor):
            if id(node) not in self.main:
                raise _Unsafe(f"'{tensor.name}' is read inside a subgraph")
            self._forward(node, slot)

    # --- a node reached from its output -------------------------------------------------
    def _backward(self, node: gs.Node, slot: Slot) -> None:
        layer = prunable_layer(node)
        if layer is not None and slot.block == 1:
            if (node, slot.offset) not in [(r, o) for r, o in self.group.roots if r is node]:
                self.group.roots.append((node, slot.offset))
                self._root_edits(node, layer, slot.offset)
            return
        if node.op == "Concat":
            self._concat_backward(node, slot)
            return
        if node.op in ("Flatten", "Reshape"):
            if not any(s.tensor is node.inputs[0] for s in self.group.slots):
                raise _Unsafe(f"{node.op} '{node.name}' output joins the group from below")
            return
        self._channelwise(node, slot, reached_from_output=True)

    def _concat_backward(self, node: gs.Node, slot: Slot) -> None:
        if _axis(node.attrs.get("axis", 0), node.outputs[0]) != slot.axis:
            raise _Unsafe(f"Concat '{node.name}' stacks along another axis")
        start = 0
        for tensor in node.inputs:
            width = _dim(tensor, slot.axis)
            if width is None:
                raise _Unsafe(f"Concat '{node.name}' input widths unknown")
            if start <= slot.offset and slot.offset + self.group.size * slot.block <= start + width:
                self._join(Slot(tensor, slot.axis, slot.offset - start, slot.block), _key(slot))
                return
            start += width
        raise _Unsafe(f"group spans two inputs of Concat '{node.name}'")

    # --- a node reached from one of its inputs --------------------------------------------
    def _forward(self, node: gs.Node, slot: Slot) -> None:
        tensor = slot.tensor
        if node.op in ("Conv", "ConvTranspose") and node.inputs[0] is tensor:
            if _is_depthwise(node, tensor):
                self._channelwise(node, slot, reached_from_output=False)
                return
            if node.attrs.get("group", 1) == 1 and ir.constant_value(node.inputs[1]) is not None and slot.block == 1:
                axis = 1 if node.op == "Conv" else 0
                self._sink(node, Edit(node, 1, axis, slot.offset), slot)
                return
            raise _Unsafe(f"grouped {node.op} '{node.name}'")
        if node.op in ("Gemm", "MatMul") and node.inputs[0] is tensor and slot.axis == -1 and ir.constant_value(node.inputs[1]) is not None:
            weight = ir.constant_value(node.inputs[1])
            if weight.ndim == 2 and not node.attrs.get("transA", 0):
                axis = 1 if node.attrs.get("transB", 0) else 0
                self._sink(node, Edit(node, 1, axis, slot.offset, slot.block), slot)
                return
        if node.op == "Concat":
            axis = _axis(node.attrs.get("axis", 0), node.outputs[0])
            if axis != slot.axis:
                raise _Unsafe(f"Concat '{node.name}' stacks along another axis")
            start = 0
            for member in node.inputs:
                if member is tensor:
                    break
                width = _dim(member, axis)
                if width is None:
                    raise _Unsafe(f"Concat '{node.name}' input widths unknown")
                start += width
            self._join(Slot(node.outputs[0], axis, start + slot.offset, slot.block), _key(slot))
            return
        if node.op in ("Flatten", "Reshape"):
            self._flatten(node, slot)
            return
        self._channelwise(node, slot, reached_from_output=False)

    def _sink(self, node: gs.Node, edit: Edit, slot: Slot) -> None:
        self._edit(edit)
        if all(s.node is not node for s in self.group.sinks):
            self.group.sinks.append(Sink(node, slot))

    def _flatten(self, node: gs.Node, slot: Slot) -> None:
        shape = slot.tensor.shape
        if shape is None or not ir.is_static_shape(shape[1:]):
            raise _Unsafe(f"{node.op} '{node.name}' input shape unknown")
        rank = len(shape)
        position = rank + slot.axis
        if node.op == "Flatten":
            start = node.attrs.get("axis", 1) % rank if rank else 0
        else:
            target = ir.constant_value(node.inputs[1])
            flat = math.prod(shape[1:])
            if target is None or len(target) != 2 or (node.attrs.get("allowzero", 0) and 0 in target) or not (
                (target[0] in (0, shape[0]) and target[1] == -1) or (target[0] in (0, -1, shape[0]) and target[1] == flat)
            ):
                raise _Unsafe(f"Reshape '{node.name}' mixes channels")
            start = 1
            if target[1] != -1:
                self.group.reshapes.append((node, slot.block * flat // shape[position]))
        if position != start:
            raise _Unsafe(f"{node.op} '{node.name}' mixes channels")
        block = slot.block * math.prod(shape[position + 1:])
        self._join(Slot(node.outputs[0], -1, slot.offset * block // slot.block, block), _key(slot))

    def _channelwise(self, node: gs.Node, slot: Slot, reached_from_output: bool) -> None:
        """Nodes that keep channel `c` in channel `c`: the output and every channel-carrying input join."""
        op = node.op
        if len(node.outputs) != 1 and op not in ("Dropout", "BatchNormalization"):
            raise _Unsafe(f"{op} '{node.name}' has several outputs")
        output = node.outputs[0]
        if op in _PER_CHANNEL or op in _REDUCE:
            self._check_per_channel(node, slot)
            if not reached_from_output:
                self._join(Slot(output, slot.axis, slot.offset, slot.block), _key(slot))
            else:
                self._join(Slot(node.inputs[0], slot.axis, slot.offset, slot.block), _key(slot))
            return
        if op in _PER_CHANNEL_PARAMS and slot.axis == -_rank(output, 0) + 1 and slot.block == 1:
            for index in _PER_CHANNEL_PARAMS[op]:
                if index < len(node.inputs):
                    if ir.constant_value(node.inputs[index]) is None:
                        raise _Unsafe(f"{op} '{node.name}' parameters are not constant")
                    self._edit(Edit(node, index, 0, slot.offset))
            self._join(Slot(output, slot.axis, slot.offset), _key(slot))
            self._join(Slot(node.inputs[0], slot.axis, slot.offset), _key(slot))
            return
        if op in ("Conv", "ConvTranspose") and _is_depthwise(node, node.inputs[0]) and slot.block == 1:
            self._edit(Edit(node, 1, 0, slot.offset))
            if len(node.inputs) > 2:
                self._edit(Edit(node, 2, 0, slot.offset))
            if node not in self.group.depthwise:
                self.group.depthwise.append(node)
            self._join(Slot(output, slot.axis, slot.offset), _key(slot))
            self._join(Slot(node.inputs[0], slot.axis, slot.offset), _key(slot))
            return
        if op in _ELEMENTWISE:
            rank = _rank(output, 0)
            for index, tensor in enumerate(node.inputs):
                value = ir.constant_value(tensor)
                if value is None and tensor.shape is None:
                    raise _Unsafe(f"{op} '{node.name}' input '{tensor.name}' shape unknown")
                position = (len(value.shape) if value is not None else _rank(tensor, 0)) + slot.axis
                if position < 0:
                    continue  # broadcast along the channel axis: shared by every channel
                width = value.shape[position] if value is not None else _dim(tensor, slot.axis)
                if width == 1:
                    continue
                if width is None or width != _channels(slot):
                    raise _Unsafe(f"{op} '{node.name}' input '{tensor.name}' does not broadcast over the channels")
                if value is not None:
                    self._edit(Edit(node, index, position, slot.offset, slot.block))
                else:
                    self._join(Slot(tensor, slot.axis, slot.offset, slot.block), _key(slot))
            if rank == 0:
                raise _Unsafe(f"{op} '{node.name}' output rank unknown")
            self._join(Slot(output, slot.axis, slot.offset, slot.block), _key(slot))
            return
        raise _Unsafe(f"{op} '{node.name}' consumes the channels")

    def _check_per_channel(self, node: gs.Node, slot: Slot) -> None:
        op = node.op
        if op in _REDUCE:
            axes = node.attrs.get("axes")
            if axes is None and len(node.inputs) > 1:
                axes = ir.constant_value(node.inputs[1])
            rank = _rank(node.inputs[0], 0)
            if axes is None or not node.attrs.get("keepdims", 1) or rank == 0 or (rank + slot.axis) in [a % rank for a in np.atleast_1d(axes)]:
                raise _Unsafe(f"{op} '{node.name}' reduces over the channels")
            return
        if op in ("Resize", "Upsample"):
            scales = ir.constant_value(node.inputs[-1 if op == "Upsample" else 2]) if len(node.inputs) > (1 if op == "Upsample" else 2) else None
            if scales is None or scales.size == 0 or scales[len(scales) + slot.axis] != 1:
                raise _Unsafe(f"{op} '{node.name}' does not keep the channel count by a constant scale of 1")
            return
        if op == "Pad":
            pads = node.attrs.get("pads")
            if pads is None and len(node.inputs) > 1:
                pads = ir.constant_value(node.inputs[1])
            rank = _rank(node.inputs[0], 0)
            if pads is None or len(node.inputs) > 3 or rank == 0 or pads[rank + slot.axis] or pads[2 * rank + slot.axis]:
                raise _Unsafe(f"Pad '{node.name}' pads the channels")
            return
        for tensor in node.inputs[1:]:
            value = ir.constant_value(tensor)
            if tensor.name and (value is None or value.size != 1):
                raise _Unsafe(f"{op} '{node.name}' has a non-scalar extra input")

    def _root_edits(self, node: gs.Node, layer: tuple[int, int], offset: int) -> None:
        self._edit(Edit(node, layer[0], layer[1], offset))
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = ir.constant_value(node.inputs[2])
            if bias is None:
                raise _Unsafe(f"{node.op} '{node.name}' bias is not constant")
            if bias.ndim and bias.shape[-1] > 1:
                self._edit(Edit(node, 2, bias.ndim - 1, offset))

    def _edit(self, edit: Edit) -> None:
        self.group.edits.setdefault((id(edit.node), edit.index, edit.axis, edit.offset), edit)


def _is_depthwise(node: gs.Node, tensor: gs.Tensor) -> bool:
    weight = ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    groups = node.attrs.get("group", 1)
    return node.op == "Conv" and weight is not None and groups > 1 and weight.shape[1] == 1 and weight.shape[0] == groups == _dim(tensor, -3)


def _key(slot: Slot) -> tuple[int, int]:
    return id(slot.tensor), slot.offset


def _rank(tensor: gs.Tensor, default: int) -> int:
    return len(tensor.shape) if tensor.shape is not None else default


def _dim(tensor: gs.Tensor, axis: int):
    value = ir.constant_value(tensor)
    shape = value.shape if value is not None else tensor.shape
    if shape is None or len(shape) < -axis:
        return None
    dim = shape[axis]
    return int(dim) if isinstance(dim, (int, np.integer)) else None


def _channels(slot: Slot):
    return _dim(slot.tensor, slot.axis)


def _axis(axis: int, tensor: gs.Tensor) -> int:
    rank = _rank(tensor, 0)
    return axis - rank if axis >= 0 else axis
