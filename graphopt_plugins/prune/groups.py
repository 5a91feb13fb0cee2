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

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.prune.channel_ops import (
    ELEMENTWISE, PER_CHANNEL, PER_CHANNEL_PARAMS, REDUCE, Unsafe, axis_of, check_per_channel, dim, is_depthwise, rank,
)

__all__ = ["Slot", "Edit", "Sink", "Group", "find_groups", "prunable_layer"]

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


def prunable_layer(node: gs.Node) -> tuple[int, int] | None:
    """(weight input index, output-channel axis of the weight) of a layer whose outputs can be removed."""
    if node.op in ("Conv", "ConvTranspose") and len(node.inputs) >= 2 and node.attrs.get("group", 1) == 1:
        weight = graph_queries.constant_value(node.inputs[1])
        if weight is not None and weight.ndim >= 3:
            return 1, 0 if node.op == "Conv" else 1
    if node.op == "Gemm" and len(node.inputs) >= 2 and not node.attrs.get("transA", 0):
        weight = graph_queries.constant_value(node.inputs[1])
        if weight is not None and weight.ndim == 2:
            return 1, 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul":
        weight = graph_queries.constant_value(node.inputs[1])
        if weight is not None and weight.ndim == 2 and graph_queries.constant_value(node.inputs[0]) is None:
            return 1, 1
    return None


def find_groups(graph: gs.Graph) -> list[Group]:
    """Every dependency group of the main graph, roots in topological order; unsafe ones carry a reason."""
    graph.toposort(mode="nodes")
    main = {id(node) for node in graph.nodes}
    outputs = graph_queries.graph_output_ids(graph)
    claimed: set[tuple[int, int]] = set()
    groups = []
    for node in graph.nodes:
        layer = prunable_layer(node)
        if layer is None or (id(node), 0) in claimed or len(node.outputs) != 1:
            continue
        size = graph_queries.constant_value(node.inputs[layer[0]]).shape[layer[1]]
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
            axis = 1 - graph_queries.constant_value(root.inputs[1]).ndim  # NC…: the output has the kernel's rank
        else:
            axis = -1
        start = Slot(root.outputs[0], axis, 0)
        try:
            self._join(start, None)
            while self.queue:
                slot, _ = self.queue.popleft()
                self._visit(slot)
        except Unsafe as reason:
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
            raise Unsafe(f"channel count of '{slot.tensor.name}' unknown")
        if slot.offset + self.group.size * slot.block > channels:
            raise Unsafe(f"'{slot.tensor.name}' has fewer channels than the group")
        self.group.slots.append(slot)
        self.queue.append((slot, key))

    def _visit(self, slot: Slot) -> None:
        tensor = slot.tensor
        if id(tensor) in self.outputs:
            raise Unsafe(f"reaches graph output '{tensor.name}'")
        source = graph_queries.producer(tensor)
        if source is None:
            raise Unsafe(f"reaches graph input '{tensor.name}'")
        self._backward(source, slot)
        for node in graph_queries.consumers(tensor):
            if id(node) not in self.main:
                raise Unsafe(f"'{tensor.name}' is read inside a subgraph")
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
                raise Unsafe(f"{node.op} '{node.name}' output joins the group from below")
            return
        self._channelwise(node, slot, reached_from_output=True)

    def _concat_backward(self, node: gs.Node, slot: Slot) -> None:
        if axis_of(node.attrs.get("axis", 0), node.outputs[0]) != slot.axis:
            raise Unsafe(f"Concat '{node.name}' stacks along another axis")
        start = 0
        for tensor in node.inputs:
            width = dim(tensor, slot.axis)
            if width is None:
                raise Unsafe(f"Concat '{node.name}' input widths unknown")
            if start <= slot.offset and slot.offset + self.group.size * slot.block <= start + width:
                self._join(Slot(tensor, slot.axis, slot.offset - start, slot.block), _key(slot))
                return
            start += width
        raise Unsafe(f"group spans two inputs of Concat '{node.name}'")

    # --- a node reached from one of its inputs --------------------------------------------
    def _forward(self, node: gs.Node, slot: Slot) -> None:
        tensor = slot.tensor
        if node.op in ("Conv", "ConvTranspose") and node.inputs[0] is tensor:
            if is_depthwise(node, tensor):
                self._channelwise(node, slot, reached_from_output=False)
                return
            if node.attrs.get("group", 1) == 1 and graph_queries.constant_value(node.inputs[1]) is not None and slot.block == 1:
                axis = 1 if node.op == "Conv" else 0
                self._sink(node, Edit(node, 1, axis, slot.offset), slot)
                return
            raise Unsafe(f"grouped {node.op} '{node.name}'")
        if node.op in ("Gemm", "MatMul") and node.inputs[0] is tensor and slot.axis == -1 and graph_queries.constant_value(node.inputs[1]) is not None:
            weight = graph_queries.constant_value(node.inputs[1])
            if weight.ndim == 2 and not node.attrs.get("transA", 0):
                axis = 1 if node.attrs.get("transB", 0) else 0
                self._sink(node, Edit(node, 1, axis, slot.offset, slot.block), slot)
                return
        if node.op == "Concat":
            axis = axis_of(node.attrs.get("axis", 0), node.outputs[0])
            if axis != slot.axis:
                raise Unsafe(f"Concat '{node.name}' stacks along another axis")
            start = 0
            for member in node.inputs:
                if member is tensor:
                    break
                width = dim(member, axis)
                if width is None:
                    raise Unsafe(f"Concat '{node.name}' input widths unknown")
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
        if shape is None or not tensor_shapes.is_static_shape(shape[1:]):
            raise Unsafe(f"{node.op} '{node.name}' input shape unknown")
        ndim = len(shape)
        position = ndim + slot.axis
        if node.op == "Flatten":
            start = node.attrs.get("axis", 1) % ndim if ndim else 0
        else:
            target = graph_queries.constant_value(node.inputs[1])
            flat = math.prod(shape[1:])
            if target is None or len(target) != 2 or (node.attrs.get("allowzero", 0) and 0 in target) or not (
                (target[0] in (0, shape[0]) and target[1] == -1) or (target[0] in (0, -1, shape[0]) and target[1] == flat)
            ):
                raise Unsafe(f"Reshape '{node.name}' mixes channels")
            start = 1
            if target[1] != -1:
                self.group.reshapes.append((node, slot.block * flat // shape[position]))
        if position != start:
            raise Unsafe(f"{node.op} '{node.name}' mixes channels")
        block = slot.block * math.prod(shape[position + 1:])
        self._join(Slot(node.outputs[0], -1, slot.offset * block // slot.block, block), _key(slot))

    def _channelwise(self, node: gs.Node, slot: Slot, reached_from_output: bool) -> None:
        """Nodes that keep channel `c` in channel `c`: the output and every channel-carrying input join."""
        op = node.op
        if len(node.outputs) != 1 and op not in ("Dropout", "BatchNormalization"):
            raise Unsafe(f"{op} '{node.name}' has several outputs")
        output = node.outputs[0]
        if op in PER_CHANNEL or op in REDUCE:
            check_per_channel(node, slot.axis)
            if not reached_from_output:
                self._join(Slot(output, slot.axis, slot.offset, slot.block), _key(slot))
            else:
                self._join(Slot(node.inputs[0], slot.axis, slot.offset, slot.block), _key(slot))
            return
        if op in PER_CHANNEL_PARAMS and slot.axis == -rank(output, 0) + 1 and slot.block == 1:
            for index in PER_CHANNEL_PARAMS[op]:
                if index < len(node.inputs):
                    if graph_queries.constant_value(node.inputs[index]) is None:
                        raise Unsafe(f"{op} '{node.name}' parameters are not constant")
                    self._edit(Edit(node, index, 0, slot.offset))
            self._join(Slot(output, slot.axis, slot.offset), _key(slot))
            self._join(Slot(node.inputs[0], slot.axis, slot.offset), _key(slot))
            return
        if op in ("Conv", "ConvTranspose") and is_depthwise(node, node.inputs[0]) and slot.block == 1:
            self._edit(Edit(node, 1, 0, slot.offset))
            if len(node.inputs) > 2:
                self._edit(Edit(node, 2, 0, slot.offset))
            if node not in self.group.depthwise:
                self.group.depthwise.append(node)
            self._join(Slot(output, slot.axis, slot.offset), _key(slot))
            self._join(Slot(node.inputs[0], slot.axis, slot.offset), _key(slot))
            return
        if op in ELEMENTWISE:
            out_rank = rank(output, 0)
            for index, tensor in enumerate(node.inputs):
                value = graph_queries.constant_value(tensor)
                if value is None and tensor.shape is None:
                    raise Unsafe(f"{op} '{node.name}' input '{tensor.name}' shape unknown")
                position = (len(value.shape) if value is not None else rank(tensor, 0)) + slot.axis
                if position < 0:
                    continue  # broadcast along the channel axis: shared by every channel
                width = value.shape[position] if value is not None else dim(tensor, slot.axis)
                if width == 1:
                    continue
                if width is None or width != _channels(slot):
                    raise Unsafe(f"{op} '{node.name}' input '{tensor.name}' does not broadcast over the channels")
                if value is not None:
                    self._edit(Edit(node, index, position, slot.offset, slot.block))
                else:
                    self._join(Slot(tensor, slot.axis, slot.offset, slot.block), _key(slot))
            if out_rank == 0:
                raise Unsafe(f"{op} '{node.name}' output rank unknown")
            self._join(Slot(output, slot.axis, slot.offset, slot.block), _key(slot))
            return
        raise Unsafe(f"{op} '{node.name}' consumes the channels")

    def _root_edits(self, node: gs.Node, layer: tuple[int, int], offset: int) -> None:
        self._edit(Edit(node, layer[0], layer[1], offset))
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = graph_queries.constant_value(node.inputs[2])
            if bias is None:
                raise Unsafe(f"{node.op} '{node.name}' bias is not constant")
            if bias.ndim and bias.shape[-1] > 1:
                self._edit(Edit(node, 2, bias.ndim - 1, offset))

    def _edit(self, edit: Edit) -> None:
        self.group.edits.setdefault((id(edit.node), edit.index, edit.axis, edit.offset), edit)


def _key(slot: Slot) -> tuple[int, int]:
    return id(slot.tensor), slot.offset


def _channels(slot: Slot):
    return dim(slot.tensor, slot.axis)
