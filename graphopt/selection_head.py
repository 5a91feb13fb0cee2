"""Outputs a selection makes (ArgMax, TopK, NonMaxSuppression) are judged on what it selects from.

A segmentation model ending in ArgMax, a classifier returning its top-k ids, a detector ending
in NonMaxSuppression: their outputs are integers, or rows picked by them, that flip on the
smallest change, and a budget (a cosine between two lists of class ids) cannot say whether a
lossy pass kept the model. So a run with lossy passes works on the *trunk*: the model without
its selection and everything after it (the *head*), whose outputs are the float tensors the
selection reads (the logits, the boxes and scores) beside the model's other outputs. Every pass
and every judgement sees those; the head, a few index-picking ops without weights, is put back
unchanged at the end (converted to the result's opset if a pass moved it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import version_converter

from graphopt.verify.metrics import output_metrics

__all__ = ["SELECTIONS", "Head", "split_head", "attach_head", "agreement"]

SELECTIONS = frozenset({"ArgMax", "ArgMin", "TopK", "NonMaxSuppression"})
# ops whose weights a lossy pass would change: a head holding one is not set aside
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "LSTM", "GRU", "RNN"})
_MAX_HEAD_NODES = 64


@dataclasses.dataclass
class Head:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    reads: list[onnx.ValueInfoProto]  # the trunk tensors the head reads, each a trunk output
    outputs: list[onnx.ValueInfoProto]  # the model's outputs, all of them, in order
    opset: int  # the default-domain opset the head's nodes are written for
    selections: list[str]  # the selection ops, by type

    def describe(self) -> dict:
        return {"selections": self.selections, "nodes": len(self.nodes), "judged_on": [value.name for value in self.reads],
                "outputs": [value.name for value in self.outputs if value.name not in {r.name for r in self.reads}]}


def split_head(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Head | None]:
    """(the trunk, the head) when outputs of `model` come through a selection; else (`model`, None).
    `model` must be shape-inferred: the tensors the head reads need their types."""
    graph = model.graph
    in_head = _downstream_of_selections(graph)
    outputs = {value.name for value in graph.output}
    made_by_head = {name for index in in_head for name in graph.node[index].output}
    if not in_head or not outputs & made_by_head or len(in_head) > _MAX_HEAD_NODES:
        return model, None
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    if any(graph.node[i].op_type in _WEIGHTED and any(name in initializers for name in graph.node[i].input) for i in in_head):
        return model, None
    trunk_nodes = [node for index, node in enumerate(graph.node) if index not in in_head]
    read_by_trunk = {name for node in trunk_nodes for name in node.input} | (outputs - made_by_head)
    head_nodes = [graph.node[index] for index in sorted(in_head)]
    wanted = list(dict.fromkeys(name for node in head_nodes for name in node.input if name and name not in made_by_head))
    moved = [name for name in wanted if name in initializers and name not in read_by_trunk]
    types = {value.name: value for value in (*graph.value_info, *graph.input, *graph.output)}
    reads = [name for name in wanted if name not in initializers or name in read_by_trunk]
    inputs = {value.name for value in graph.input}
    # a selection straight off a model input leaves no trunk worth judging
    if not trunk_nodes or any(name in inputs or name not in types or not types[name].type.tensor_type.elem_type for name in reads):
        return model, None
    trunk = onnx.ModelProto()
    trunk.CopyFrom(model)
    del trunk.graph.node[:]
    trunk.graph.node.extend(trunk_nodes)
    kept = [tensor for tensor in graph.initializer if tensor.name not in set(moved)]
    del trunk.graph.initializer[:]
    trunk.graph.initializer.extend(kept)
    trunk_outputs = [value for value in graph.output if value.name not in made_by_head]
    trunk_outputs += [types[name] for name in reads if name not in {value.name for value in trunk_outputs}]
    del trunk.graph.output[:]
    trunk.graph.output.extend(trunk_outputs)
    head = Head(nodes=head_nodes, initializers=[initializers[name] for name in moved], reads=[types[name] for name in reads],
                outputs=list(graph.output), opset=_default_opset(model),
                selections=sorted({node.op_type for node in head_nodes if node.op_type in SELECTIONS}))
    return trunk, head


def attach_head(trunk: onnx.ModelProto, head: Head) -> onnx.ModelProto:
    """`trunk` (as the passes left it) with `head` after it and the model's outputs, in place."""
    nodes, initializers = head.nodes, head.initializers
    if _default_opset(trunk) != head.opset:
        converted = version_converter.convert_version(_head_model(head), _default_opset(trunk))
        nodes, initializers = list(converted.graph.node), list(converted.graph.initializer)
    trunk.graph.node.extend(nodes)
    trunk.graph.initializer.extend(initializers)
    del trunk.graph.output[:]
    trunk.graph.output.extend(head.outputs)
    return trunk


def agreement(head: Head, reference: list[dict[str, np.ndarray]], result: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """Per output the head makes, how often the result's equals the input model's over the samples:
    what a selection's flips cost, reported beside the judgement made on what it selects from."""
    found = {}
    for name in head.describe()["outputs"]:
        pairs = [(np.asarray(r[name]), np.asarray(c[name])) for r, c in zip(reference, result)]
        same_shape = [(r, c) for r, c in pairs if r.shape == c.shape]
        entry = {"samples": len(pairs), "shape_differs": len(pairs) - len(same_shape)}
        if same_shape and same_shape[0][0].dtype.kind == "f":  # rows a selection picked: how close
            entry["cosine"] = round(min(output_metrics(r, c)["cosine"] for r, c in same_shape), 6)
        elif same_shape:  # ids and indices: how many stayed
            total = sum(r.size for r, _ in same_shape)
            entry["equal_fraction"] = round(sum(int(np.sum(r == c)) for r, c in same_shape) / total, 6) if total else 1.0
        found[name] = entry
    return found


def _downstream_of_selections(graph: onnx.GraphProto) -> set[int]:
    """The indices of the main graph's selection nodes and of every node reading what they make."""
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, []).append(index)
    found: set[int] = set()
    stack = [index for index, node in enumerate(graph.node) if node.op_type in SELECTIONS and node.domain in ("", "ai.onnx")]
    while stack:
        index = stack.pop()
        if index not in found:
            found.add(index)
            stack.extend(reader for name in graph.node[index].output for reader in readers.get(name, ()))
    return found


def _head_model(head: Head) -> onnx.ModelProto:
    made = {name for node in head.nodes for name in node.output}
    graph = onnx.helper.make_graph(head.nodes, "head", head.reads, [value for value in head.outputs if value.name in made],
                                   head.initializers)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", head.opset)])


def _default_opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 1)
