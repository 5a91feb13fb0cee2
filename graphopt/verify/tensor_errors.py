"""Where a lossy model's error comes from: SQNR and cosine of every tensor it shares with the reference.

Like onnxruntime's `qdq_loss_debug`, for any two models: float tensors of the same name in both
(rewrites keep a quantized tensor's name on its dequantized value), worst sample per row, worst
SQNR first, so the first rows name the layers to keep float or to fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx

from graphopt.model import infer_model_shapes
from graphopt.verify.metrics import output_metrics

__all__ = ["shared_tensors", "per_tensor_errors"]


def _float_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Float32 tensors of the main graph by name, with the index of the node that makes them."""
    found = {value.name: -1 for value in model.graph.input}
    for index, node in enumerate(model.graph.node):
        for name in node.output:
            if name:
                found[name] = index
    typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)}
    return {name: index for name, index in found.items() if types.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT}


def shared_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[str]:
    """Float tensors produced under the same name in both models, in the reference's node order."""
    ours, theirs = _float_tensors(reference), _float_tensors(candidate)
    inputs = {value.name for value in reference.graph.input}
    return [name for name, _ in sorted(ours.items(), key=lambda item: item[1]) if name in theirs and name not in inputs]


def per_tensor_errors(reference: onnx.ModelProto, candidate: onnx.ModelProto, samples: Mapping[str, np.ndarray],
                      limit: int | None = None) -> list[dict]:
    """Rows `{tensor, sqnr_db, cosine, max_abs}` (worst sample each), worst SQNR first; `limit` rows at most."""
    reference, candidate = infer_model_shapes(reference), infer_model_shapes(candidate)
    names = shared_tensors(reference, candidate)
    worst: dict[str, dict] = {}
    # imported here: graphopt.activations runs models through graphopt.verify's feeds and
    # runner, so importing it at the top made `import graphopt.activations` a cycle
    from graphopt.activations import iter_activations

    for expected, actual in zip(iter_activations(reference, samples, names), iter_activations(candidate, samples, names)):
        for name in names:
            metrics = output_metrics(np.asarray(expected[name]), np.asarray(actual[name]))
            row = worst.setdefault(name, {"tensor": name, "sqnr_db": math.inf, "cosine": 1.0, "max_abs": 0.0})
            row["sqnr_db"] = min(row["sqnr_db"], float(metrics["sqnr_db"]))
            row["cosine"] = min(row["cosine"], float(metrics["cosine"]))
            row["max_abs"] = max(row["max_abs"], float(metrics["max_abs"]))
    rows = sorted(worst.values(), key=lambda row: (row["sqnr_db"], row["cosine"]))
    return rows[:limit] if limit else rows
