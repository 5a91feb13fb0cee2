"""The declared shapes: output shapes that contradict the model, or are missing, are repaired,
stale intermediate annotations dropped, and only the annotations the user's model had are kept.

Some exporters write a graph output's shape from a stale trace: declared `[1, seqlen]`, the
model really produces `[32, 1, 8210]`. onnxruntime runs such a model (it checks outputs only
loosely), but ONNX's full checker refuses it, and so would refuse graphopt's output. Such an
annotation is replaced by the shape inference finds, or dropped when inference finds none;
the caller reports the warning, and verification compares the outputs the model really makes.
An output declared with a type and no shape (`make_tensor_value_info(name, FLOAT, None)`, as
hand-built models have it) also runs in onnxruntime and fails the checker; it gets the shape
inference finds.

An exporter that fixed a dynamic dim while tracing (torch's dynamo exporter on a GRU: input
`[1, time, 32]`, every intermediate annotated with time = 20) leaves annotations onnxruntime's
optimizer plans with: its MatMul+Add fusion reshapes to `[20, 64]`, and the model fails at any
other length once optimized. A declared size where inference finds one of the inputs' dynamic
dims is such a contradiction; contradicting intermediate annotations are dropped.

Shape inference annotates every tensor for the passes' use; shipping them grew a pre-quantized
CNN whose exporter annotated 33 tensors to 73 annotations (+1.3 kB over 27 kB), though nothing
else grew. So the output keeps value_info only for the tensors the input annotated (possibly
sharper than what graphopt inferred).
"""

from __future__ import annotations

import logging

import onnx

from graphopt.errors import first_line
from graphopt.convert import stand_in_weights
from graphopt.proto_walk import iter_graph_protos

__all__ = ["repaired_output_shapes", "annotated_names", "keep_given_value_info"]

logger = logging.getLogger(__name__)


def repaired_output_shapes(model: onnx.ModelProto, *, stubs: dict | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """(`model`, []) when its declared shapes agree with inference; else a copy whose contradicting
    output annotations are replaced, stale intermediate ones dropped, and one warning each.
    `stubs`: `model`'s `convert.constant_placeholders`, when the caller has them."""
    tensors = [v for v in model.graph.output if v.type.HasField("tensor_type")]
    declared = {v.name: v.type.tensor_type.shape for v in tensors if v.type.tensor_type.HasField("shape")}
    shapeless = [v.name for v in tensors if not v.type.tensor_type.HasField("shape")]
    if not tensors:
        return model, []
    inferred = _inferred_shapes(model, stubs)
    if inferred is None:
        return model, []
    free = {d.dim_param for value in model.graph.input for d in value.type.tensor_type.shape.dim if d.dim_param}
    wrong = {name: inferred[name] for name, shape in declared.items() if _contradicts(shape, inferred.get(name), free)}
    wrong.update((name, inferred[name]) for name in shapeless if name in inferred)
    stale = [value for value in model.graph.value_info if value.type.tensor_type.HasField("shape")
             and _contradicts(value.type.tensor_type.shape, inferred.get(value.name), free)]
    if not wrong and not stale:
        return model, []
    repaired = onnx.ModelProto()
    repaired.CopyFrom(model)
    warnings = []
    for value in repaired.graph.output:
        if value.name not in wrong:
            continue
        before = "no shape" if value.name in shapeless else f"shape {_text(value.type.tensor_type.shape)}"
        value.type.tensor_type.shape.CopyFrom(wrong[value.name])
        why = ("which ONNX's checker requires of a graph output" if value.name in shapeless
               else "which the model does not produce")
        warnings.append(f"output '{value.name}' declares {before}, {why}; the output declares {_text(wrong[value.name])}, "
                        "the shape inference finds, instead")
    if stale:
        names = {value.name for value in stale}
        kept = [value for value in repaired.graph.value_info if value.name not in names]
        del repaired.graph.value_info[:]
        repaired.graph.value_info.extend(kept)
        example = stale[0]
        warnings.append(f"{len(stale)} tensor annotation(s) (value_info) contradict the model, e.g. '{example.name}' declares "
                        f"{_text(example.type.tensor_type.shape)} where the model makes {_text(inferred[example.name])} "
                        "(an exporter that fixed a dynamic dim while tracing): they are dropped, so onnxruntime does "
                        "not plan with them")
    for warning in warnings:
        logger.warning("%s", warning)
    return repaired, warnings


def _inferred_shapes(model: onnx.ModelProto, stubs: dict | None) -> dict[str, onnx.TensorShapeProto] | None:
    """The shapes inference finds for the main graph's outputs and intermediates when the declared
    ones are taken away (None if it fails)."""
    probe = stand_in_weights(model, value_info=False, constants=True, stubs=stubs)[0]  # weights stand in: a cheap copy
    if probe is model:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
    for value in probe.graph.output:
        value.type.tensor_type.ClearField("shape")
    del probe.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False, data_prop=True)
    except Exception as error:  # onnx raises several unrelated types here
        logger.debug("output shape check skipped: inference failed: %s", first_line(error))
        return None
    return {v.name: v.type.tensor_type.shape for v in (*inferred.graph.value_info, *inferred.graph.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _contradicts(declared: onnx.TensorShapeProto, inferred: onnx.TensorShapeProto | None, free: set[str]) -> bool:
    """Whether `declared` cannot be what the model makes: another rank, another fixed size, or a
    fixed size where the model makes one of its inputs' dynamic dims (`free`)."""
    if inferred is None:
        return False
    if len(declared.dim) != len(inferred.dim):
        return True
    return any(d.HasField("dim_value") and ((i.HasField("dim_value") and d.dim_value != i.dim_value) or i.dim_param in free)
               for d, i in zip(declared.dim, inferred.dim))


def _text(shape: onnx.TensorShapeProto) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim) + "]"


def annotated_names(model: onnx.ModelProto) -> set[str]:
    """The tensors `model` has value_info for, in any of its graphs."""
    return {value.name for graph in iter_graph_protos(model.graph) for value in graph.value_info}


def keep_given_value_info(model: onnx.ModelProto, annotated: set[str]) -> bool:
    """Drops from every graph of `model` the value_info of tensors not in `annotated`; whether any went."""
    dropped = False
    for graph in iter_graph_protos(model.graph):
        kept = [value for value in graph.value_info if value.name in annotated]
        if len(kept) != len(graph.value_info):
            dropped = True
            del graph.value_info[:]
            graph.value_info.extend(kept)
    return dropped
