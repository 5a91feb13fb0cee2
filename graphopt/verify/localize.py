"""Finding where two graphs first disagree — among tensors whose meaning survived the rewrite.

A tensor both graphs name alike need not mean the same in both: a fold that moves a scale across
a Conv keeps the Conv's output name while the reader downstream compensates. So only *anchored*
tensors are compared, found walking back from the outputs: a graph output is anchored, and a
shared tensor is when every candidate node reading it is the reference's same node (op,
attributes, input names and constant values, outputs) with anchored outputs, or a quantizer,
which reads values as they are. Both models run with those exposed; in the candidate's order the
first outside the tolerance (or budget) names the node where the divergence starts.
"""

from __future__ import annotations

import onnx

from graphopt import activations  # the module, not its names: activations imports this package too
from graphopt.verify.metrics import Budget, output_metrics, within_tolerance
from graphopt.verify.runner import SessionError, make_session, run_samples

__all__ = ["first_divergence", "anchored_tensors"]

# Readers that take a tensor's values as they are, whatever else changed around them.
_VALUE_READERS = {"QuantizeLinear", "DynamicQuantizeLinear"}


def first_divergence(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, sample: dict, *, budget: Budget | None
) -> dict | None:
    """`{"node", "op", "tensor", "metrics"}` of the first diverging anchored tensor, or None."""
    ref_types = activations.typed_values(reference)
    cand_types = activations.typed_values(candidate)
    anchored = anchored_tensors(reference, candidate)
    order = [(node, name) for node in candidate.graph.node for name in node.output if name]
    shared = [name for _, name in order if name in anchored and name in ref_types and name in cand_types
              and ref_types[name].type.tensor_type.elem_type == cand_types[name].type.tensor_type.elem_type]
    if not shared:
        return None
    try:
        ref_values = run_samples(make_session(activations.expose_tensors(reference, shared, ref_types)), [sample], shared)[0]
        cand_values = run_samples(make_session(activations.expose_tensors(candidate, shared, cand_types)), [sample], shared)[0]
    except SessionError:
        return None
    shared_set = set(shared)
    for node, name in order:
        if name not in shared_set:
            continue
        ref, cand = ref_values[name], cand_values[name]
        if getattr(ref, "shape", None) != getattr(cand, "shape", None):
            continue
        metrics = output_metrics(ref, cand)
        diverged = bool(budget.violations(name, metrics)) if budget else not within_tolerance(ref, cand)
        if diverged:
            return {"node": node.name or f"<{node.op_type}>", "op": node.op_type, "tensor": name, "metrics": metrics}
    return None


def anchored_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> set[str]:
    """Names of the candidate's main-graph tensors whose meaning is the reference's (see module doc)."""
    ref_nodes = {name: node for node in reference.graph.node for name in node.output if name}
    ref_constants = _constants(reference)
    cand_constants = _constants(candidate)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in candidate.graph.node:
        for name in _reads(node):
            readers.setdefault(name, []).append(node)
    same_node: dict[int, bool] = {}

    def unchanged(node: onnx.NodeProto) -> bool:
        key = id(node)
        if key not in same_node:
            same_node[key] = _same_node(node, ref_nodes, ref_constants, cand_constants)
        return same_node[key]

    anchored = {value.name for value in candidate.graph.output}
    # Reverse topological order: every reader of a tensor is decided before the tensor.
    for node in reversed(candidate.graph.node):
        for name in node.output:
            if not name or name in anchored:
                continue
            if all(reader.op_type in _VALUE_READERS or (unchanged(reader) and all(out in anchored for out in reader.output if out))
                   for reader in readers.get(name, ())) and readers.get(name):
                anchored.add(name)
    return anchored


def _same_node(node: onnx.NodeProto, ref_nodes: dict, ref_constants: dict, cand_constants: dict) -> bool:
    first = next((name for name in node.output if name), None)
    ref = ref_nodes.get(first)
    if ref is None or (ref.op_type, ref.domain) != (node.op_type, node.domain) or list(ref.output) != list(node.output):
        return False
    if list(ref.input) != list(node.input):
        return False
    if [a.SerializeToString() for a in ref.attribute] != [a.SerializeToString() for a in node.attribute]:
        return False
    for name in node.input:
        if (name in ref_constants) != (name in cand_constants):
            return False
        if name in cand_constants and ref_constants[name] != cand_constants[name]:
            return False
    return True


def _constants(model: onnx.ModelProto) -> dict[str, bytes]:
    """Initializers and Constant outputs, by name, as comparable bytes (dims, type and values)."""
    found = {}
    for tensor in model.graph.initializer:
        found[tensor.name] = _tensor_key(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            found[node.output[0]] = b"".join(a.SerializeToString() for a in node.attribute)
    return found


def _tensor_key(tensor: onnx.TensorProto) -> bytes:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.ClearField("name")
    return copy.SerializeToString()


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names a node reads: its inputs, and outer names its subgraphs read."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.update(_reads(inner))
    return names
