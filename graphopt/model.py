"""The one boundary between the graph passes rewrite and the ModelProto ONNX's tools take.

A `Model` is what the pipeline holds: the graphsurgeon graph, the envelope graphsurgeon does
not model (IR version, opsets, producer, metadata, functions, doc strings, the declared
interface: the proto the graph was imported from), and the run's `RunContext` (where the
input's weights stay, where new ones spill). `to_proto` is the one way a proto is made of it.

ONNX's C++ side (checker, shape inference) always gets the placeholder form: each large weight
a dims-only graph input (`convert.stand_in_weights`), since neither reads a weight's values
and copying them through it cost more than the checking. Sizes come from the same bytes plus
the weights' byte counts; a proto with every weight is made only for onnxruntime, for a pass
that asks (`PassContext.proto`), and for the result.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
# onnx.shape_inference.infer_shapes parses its result back into a proto; the function under it
# returns the bytes, which the checker then takes as they are.
from onnx.onnx_cpp2py_export import shape_inference as c_shape_inference

from graphopt.convert import export_model, import_graph, stand_in_weights
from graphopt.errors import InputError, first_line
from graphopt.external_data import external_folder, materialize_external_data
from graphopt.proto_walk import copy_fields, copy_model, serialized_bytes
from graphopt.tensor_shapes import apply_inferred_shapes

__all__ = ["RunContext", "Model", "to_proto", "WEIGHTS", "check_and_infer", "checked_input", "check_model", "infer_model_shapes",
           "inferred_skeleton"]

logger = logging.getLogger(__name__)

WEIGHTS = ("inline", "refs", "placeholders")


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Where a run's weights live outside the proto: never stored in the model itself."""

    weights_dir: Path | None = None  # the input's data files, for weights loading left on disk
    spill_dir: Path | None = None  # this run's scratch folder for large weights passes create

    @property
    def in_memory(self) -> bool:
        """Whether every weight of the run is held in memory: no data files to read, none to spill
        to. Then no proto made of the run's model refers to a file, and none needs looking through."""
        return self.weights_dir is None and self.spill_dir is None


@dataclasses.dataclass
class Model:
    """The model a pipeline holds: the graph passes rewrite, its envelope, the run's context."""

    graph: gs.Graph
    envelope: onnx.ModelProto
    context: RunContext = RunContext()

    @classmethod
    def imported(cls, proto: onnx.ModelProto, context: RunContext = RunContext()) -> Model:
        return cls(import_graph(proto), proto, context)


def to_proto(model: Model, weights: str = "refs") -> onnx.ModelProto:
    """`model` as a ModelProto, with its weights:

    - "inline": every weight's bytes in the proto (a result that must outlive the run);
    - "refs": weights still in the input's data files stay references to them, and large new
      ones go to the run's spill folder when it has one (what onnxruntime and passes get; for
      a model held in memory, the same as "inline");
    - "placeholders": each large weight of the main graph a dims-only graph input, no bytes
      copied (what the checker and shape inference get).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    if weights == "placeholders":
        return export_model(model.graph, model.envelope, weights="placeholders")
    proto = export_model(model.graph, model.envelope, spill_dir=model.context.spill_dir)
    if weights == "inline" and external_folder(proto) is not None:
        materialize_external_data(proto)
    return proto


def check_and_infer(model: Model, *, value_info: bool = True, exported: onnx.ModelProto | None = None) -> int | None:
    """Checks `model` as `check_model(full=True)` does, on its placeholder form, and gives its
    graph the shapes inference found; returns its stored size (None over 2 GiB).

    A full check is the structural check plus strict, type-checking shape inference; run that
    inference with data propagation and its result is the shapes too. The size is the
    placeholder form's bytes plus the weights it left out, without the main graph's value_info
    unless `value_info`. `exported`: `to_proto(model, "refs")` when the caller has it at hand
    (the placeholder form is then taken from it, not exported again). Raises InputError if the
    model is invalid.
    """
    if exported is None:
        skeleton = to_proto(model, "placeholders")
        stand_ins = {value.name for value in skeleton.graph.input} - {t.name for t in skeleton.graph.initializer}
        left_out = sum(int(t._values.nbytes) for t in model.graph.tensors().values()
                       if isinstance(t, gs.Constant) and t.name in stand_ins)
    else:
        skeleton, moved = stand_in_weights(exported)
        left_out = sum(moved.values())
    data = serialized_bytes(skeleton)
    if data is None:
        return None
    # Weights in Constant nodes or bodies still in data files: the checker cannot read them by
    # absolute path; they are checked by path when written.
    on_disk = not model.context.in_memory and external_folder(skeleton) is not None
    inferred = _lenient_inference(data) or data if on_disk else _checked_inference(data)
    shaped = onnx.load_model_from_string(inferred)
    apply_inferred_shapes(model.graph, shaped)
    if exported is not None:  # as exporting the graph now would write them
        del exported.graph.value_info[:]
        exported.graph.value_info.extend(shaped.graph.value_info)
    size = len(inferred) + left_out
    if not value_info:
        size -= sum(entry.ByteSize() + 2 for entry in shaped.graph.value_info)
    return size


def _checked_inference(data: bytes) -> bytes:
    """The strictly inferred `data`, checked; InputError with the checker's reason if invalid."""
    try:
        inferred = c_shape_inference.infer_shapes(data, True, True, True)  # check_type, strict_mode, data_prop
        onnx.checker.check_model(inferred)
        return inferred
    except Exception:  # noqa: BLE001 - invalid, or only data propagation tripped: the full checker tells which
        pass
    try:
        onnx.checker.check_model(data, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError) as error:
        raise InputError(f"invalid model: {first_line(error)}") from error
    return _lenient_inference(data) or data


def _lenient_inference(data: bytes) -> bytes | None:
    try:
        return c_shape_inference.infer_shapes(data, False, False, True)  # check_type, strict_mode, data_prop
    except Exception as error:  # onnx raises several unrelated types here
        logger.warning("shape inference failed, going on without it: %s", first_line(error))
        return None


def checked_input(
    model: onnx.ModelProto, *, path: str | None = None, data: bytes | None = None, in_place: bool = False,
    stubs: dict | None = None,
) -> onnx.ModelProto:
    """`model` (a model given to graphopt) shape-inferred, having checked it structurally: a
    copy, or `model` itself filled in when `in_place` (its weights are then never copied).

    Both run once, on one serialisation of its placeholder form (`data`, `model` serialised,
    spares it when no weight stands in; `stubs`, its `convert.constant_placeholders`, spare
    reading its nodes again). Raises InputError naming `path` if it is invalid.
    """
    skeleton, moved = stand_in_weights(model)
    if skeleton is not model or data is None:
        data = serialized_bytes(skeleton)
    if data is None:
        logger.info("model is over 2 GiB in memory; skipping in-memory checking and shape inference")
        return model
    _check(skeleton, data, path=path)
    # Inference reads only the dims of a large weight held in a Constant node (paddle2onnx
    # keeps every weight in one): such values stand in too, the checker above had them whole.
    # Inference gives back the nodes of a main graph without bodies as they were: in place,
    # the model's own stay, and no weight crosses to C++ and back.
    probe = stand_in_weights(skeleton, constants=True, stubs=stubs)[0] if in_place and not _holds_bodies(skeleton.graph) else skeleton
    stubbed = probe is not skeleton
    inferred = _lenient_inference(serialized_bytes(probe) if stubbed else data)
    if inferred is None:
        return model if in_place else copy_model(model)
    result = onnx.load_model_from_string(inferred)
    if not moved and not in_place:
        return result
    # The inferred skeleton with the weights back: everything but the main graph's initializers
    # and the stand-in inputs comes from inference.
    declared = {value.name for value in model.graph.input}
    target = model if in_place else onnx.ModelProto()
    kept = ("initializer", "node") if stubbed else ("initializer",)
    for message, keep in ((target, ("graph",)), (target.graph, kept)):
        for field, _ in message.ListFields() if in_place else ():
            if field.name not in keep:
                message.ClearField(field.name)
    copy_fields(result, target, skip=("graph",))
    copy_fields(result.graph, target.graph, skip=("input",) + kept)
    target.graph.input.extend(value for value in result.graph.input if value.name not in moved or value.name in declared)
    if not in_place:
        target.graph.initializer.extend(model.graph.initializer)
    return target


def _holds_bodies(graph: onnx.GraphProto) -> bool:
    """Whether a node of `graph` has a graph attribute (inference annotates the bodies)."""
    return any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in graph.node for attribute in node.attribute)


def check_model(model: onnx.ModelProto, *, path: str | None = None, full: bool = False) -> None:
    """Runs the ONNX checker on `model`'s placeholder form; raises InputError with its first line."""
    skeleton = stand_in_weights(model)[0]
    _check(skeleton, serialized_bytes(skeleton), path=path, full=full)


def _check(skeleton: onnx.ModelProto, data: bytes | None, *, path: str | None, full: bool = False) -> None:
    if data is None or external_folder(skeleton) is not None:
        return  # over 2 GiB, or weights in Constant nodes or bodies stay in files: checked by path when written
    try:
        onnx.checker.check_model(data, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError) as error:
        raise InputError(f"invalid model: {first_line(error)}{_shapeless_interface(skeleton)}", path=path) from error


def _shapeless_interface(model: onnx.ModelProto) -> str:
    """For the checker's "Field 'shape' of 'type' is required": which graph input or output, and what to do."""
    names = [value.name for value in (*model.graph.input, *model.graph.output)
             if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape")]
    if not names:
        return ""
    return (f" (graph input/output {', '.join(map(repr, names))} declares a type but no shape; declare one, with "
            "dim_param names for dims that vary)")


def infer_model_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` shape-inferred once (data propagation on, lenient), as a new proto; a model
    inference cannot follow comes back as it was. Checks it structurally first."""
    return checked_input(model)


def inferred_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`'s placeholder form (`convert.stand_in_weights`), shape-inferred leniently and not
    checked: for reading the shapes of a model already checked, without copying its weights."""
    skeleton = stand_in_weights(model)[0]
    data = serialized_bytes(skeleton)
    inferred = _lenient_inference(data) if data is not None else None
    return onnx.load_model_from_string(inferred) if inferred is not None else skeleton
