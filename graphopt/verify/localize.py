"""Finding where two graphs first disagree.

Both models are run with every intermediate tensor they still share by name exposed as an
output; walking the candidate in topological order, the first shared tensor outside the
tolerance names the node where the divergence starts.
"""

from __future__ import annotations

import onnx

from graphopt import activations  # the module, not its names: activations imports this package too
from graphopt.verify.metrics import Budget, output_metrics, within_tolerance
from graphopt.verify.runner import SessionError, make_session, run_samples

__all__ = ["first_divergence"]


def first_divergence(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, sample: dict, *, budget: Budget | None
) -> dict | None:
    """`{"node", "op", "tensor", "metrics"}` of the first diverging shared tensor, or None."""
    ref_types = activations.typed_values(reference)
    cand_types = activations.typed_values(candidate)
    order = [(node, name) for node in candidate.graph.node for name in node.output if name]
    shared = [name for _, name in order if name in ref_types and name in cand_types]
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
        metrics = output_metrics(ref, cand)
        diverged = bool(budget.violations(name, metrics)) if budget else not within_tolerance(ref, cand)
        if diverged:
            return {"node": node.name or f"<{node.op_type}>", "op": node.op_type, "tensor": name, "metrics": metrics}
    return None
