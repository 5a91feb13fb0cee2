"""Physically removes the chosen channels of dependency groups from the graph.

Each constant a group touches is replaced, per reading node, by a new initializer with the
channels deleted (a constant shared with unrelated nodes is left as it was). A weight that
lost output channels is named `<name>.pruned-out` (or `-inout`): a later run recognizes its
layer as already pruned and leaves it alone, which keeps the pass idempotent.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.prune.groups import Edit, Group

__all__ = ["shrink_groups", "channel_features", "is_pruned_weight", "pruned_name"]

_TAG = re.compile(r"\.pruned-(in|out|inout)(?=\.|$)")


def channel_features(channels: np.ndarray, offset: int, block: int) -> np.ndarray:
    """The positions along an axis that carry group channels `channels` (offset, block as in a Slot)."""
    channels = np.asarray(channels, dtype=np.int64)
    return (offset + channels[:, None] * block + np.arange(block)[None, :]).ravel()


def is_pruned_weight(tensor: gs.Tensor) -> bool:
    match = _TAG.search(tensor.name or "")
    return bool(match) and "out" in match.group(1)


def pruned_name(name: str, out_axis_edited: bool, taken: set[str]) -> str:
    match = _TAG.search(name)
    base = name[: match.start()] + name[match.end():] if match else name
    had_out = bool(match) and "out" in match.group(1)
    had_in = bool(match) and "in" in match.group(1)
    tag = ("in" if had_in or not out_axis_edited else "") + ("out" if had_out or out_axis_edited else "")
    candidate, index = f"{base}.pruned-{tag}", 1
    while candidate in taken:
        candidate, index = f"{base}.pruned-{tag}.{index}", index + 1
    taken.add(candidate)
    return candidate


def shrink_groups(graph: gs.Graph, plan: list[tuple[Group, np.ndarray]]) -> dict[tuple[int, int], dict[int, set[int]]]:
    """Deletes `removed` channels (group coordinates) of each group.

    Returns what was deleted: `{(id(node), input index): {axis: positions}}`.
    """
    deletions: dict[tuple[int, int], tuple[gs.Node, int, dict[int, set[int]], bool]] = {}
    shrunk: dict[int, tuple[gs.Tensor, int, int]] = {}
    depthwise: dict[int, gs.Node] = {}
    reshapes: dict[int, tuple[gs.Node, int]] = {}
    for group, removed in plan:
        if not len(removed):
            continue
        edits = list(group.edits.values())
        for root, offset in group.roots:  # a bias the sink refit added after the search
            if len(root.inputs) > 2 and root.inputs[2].name and not any(e.node is root and e.index == 2 for e in edits):
                edits.append(Edit(root, 2, graph_queries.constant_value(root.inputs[2]).ndim - 1, offset))
        for edit in edits:
            key = (id(edit.node), edit.index)
            node, index, axes, out = deletions.setdefault(key, (edit.node, edit.index, {}, False))
            axes.setdefault(edit.axis, set()).update(channel_features(removed, edit.offset, edit.block).tolist())
            deletions[key] = (node, index, axes, out or (edit.index == 1 and _is_out_axis(edit.node, edit.axis)))
        for slot in group.slots:
            tensor, axis, count = shrunk.get(id(slot.tensor), (slot.tensor, slot.axis, 0))
            shrunk[id(slot.tensor)] = (tensor, axis, count + len(removed) * slot.block)
        depthwise.update((id(node), node) for node in group.depthwise)
        for node, block in group.reshapes:
            target, total = reshapes.get(id(node), (node, 0))
            reshapes[id(node)] = (node, total + len(removed) * block)
    taken = set(graph.tensors().keys())
    for node, index, axes, out in deletions.values():
        tensor = node.inputs[index]
        value = graph_queries.constant_value(tensor)
        for axis, positions in axes.items():
            value = np.delete(value, sorted(positions), axis=axis)
        node.inputs[index] = gs.Constant(pruned_name(tensor.name, out, taken), np.ascontiguousarray(value))
    for node in depthwise.values():
        node.attrs["group"] = int(graph_queries.constant_value(node.inputs[1]).shape[0])
    for node, count in reshapes.values():
        target = np.array(graph_queries.constant_value(node.inputs[1]), copy=True)
        target[1] -= count
        node.inputs[1] = gs.Constant(pruned_name(node.inputs[1].name, False, taken), target)
    for tensor, axis, count in shrunk.values():
        if isinstance(tensor, gs.Variable) and tensor.shape is not None and len(tensor.shape) >= -axis:
            shape = list(tensor.shape)
            if isinstance(shape[axis], (int, np.integer)):
                shape[axis] = int(shape[axis]) - count
                tensor.shape = shape
    return {key: axes for key, (_, _, axes, _) in deletions.items()}


def _is_out_axis(node: gs.Node, axis: int) -> bool:
    if node.op == "Conv":
        return axis == 0
    if node.op == "ConvTranspose":
        return axis == 1
    if node.op == "Gemm":
        return axis == (0 if node.attrs.get("transB", 0) else 1)
    if node.op == "MatMul":
        return axis == 1
    return False
