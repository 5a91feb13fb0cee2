"""Finding where two graphs first disagree.

Both models are run with every intermediate tensor they still share by name exposed as an
output; walking the candidate in topological order, the first shared tensor outside the
tolerance names the node where the divergence starts.
"""

from __future__ import annotations

import onnx

from graphopt.model_io import copy_model
from graphopt.verify.metrics import Budget, output_metrics, within_tolerance
from graphopt.verify.runner import SessionError, make_session, run_samples

__all__ = ["first_divergence"]


def first_divergence(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, sample: dict, *, budget: Budget | None
) -> dict | None:
    """`{"node", "op", "tensor", "metrics"}` of the first diverging shared tensor, or None."""
    ref_types = _typed_values(reference)
    cand_types = _typed_values(candidate)
    order = [(node, name) for node in candidate.graph.node for name in node.output if name]
    shared = [name for _, name in order if name in ref_types and name in cand_types]
    if not shared:
        return None
    try:
        ref_values = run_samples(make_session(_expose(reference, shared, ref_types)), [sample], shared)[0]
        cand_values = run_samples(make_session(_expose(candidate, shared, cand_types)), [sample], shared)[0]
    except SessionError:
        return None
    shared_set = set(shared)
    for node, name in order:
        if name not in shared_set:
            continue
        ref, cand = ref_values[name], cand_values[name]
        metrics = output_metrics(ref, cand)
        diverged = bool(budget.violations(name, metrics)) if budget else not within_tolerance(ref, cand)
        if diverged:
            return {"node": node.name or f"<{node.op_type}>", "op": node.op_type, "tensor": name, "metrics": metrics}
    return None


def _typed_values(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    values = {}
    for value in list(model.graph.value_info) + list(model.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            values[value.name] = value
    return values


def _expose(model: onnx.ModelProto, names: list[str], types: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    exposed = copy_model(model)
    present = {output.name for output in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(types[name])
    return exposed
