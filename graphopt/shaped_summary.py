"""A model's summary whose MACs are counted at concrete input shapes.

Shape inference leaves every tensor downstream of a symbolic dim without a size, so a model
with a dynamic batch or image side would count 0 MACs. The summary keeps the model's own
(dynamic) interface; only the MAC count is taken on a copy whose inputs are frozen at the
given shapes, or at the ones `verify.input_shapes` chooses, and `macs_shapes` says which.
Where ONNX inference still cannot size a counted op (data propagation stops at Shape
arithmetic some exporters emit, e.g. before an LSTM), onnxruntime runs the frozen copy once
and the sizes it produced fill in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import onnx

from graphopt.errors import first_line
from graphopt.convert import stand_in_weights
from graphopt.model import infer_model_shapes, inferred_skeleton
from graphopt.summary import MAC_OPS, counted_figures, summarize
from graphopt.verify.feeds import generate_feeds
from graphopt.verify.input_shapes import choose_input_shapes, freeze_input_shapes

logger = logging.getLogger(__name__)

__all__ = ["summarize_at_shapes", "count_macs_at", "leaves_dynamic"]


def leaves_dynamic(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether `model` leaves some dim of an input in `shapes` dynamic (then `count_macs_at` counts,
    and `summarize(..., count=False)` need not)."""
    # Only the inputs named: before IR 4 every initializer is listed as an input too.
    return any(not dim.HasField("dim_value") for value in model.graph.input if value.name in shapes
               for dim in value.type.tensor_type.shape.dim)


def count_macs_at(summary: dict, model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], *,
                  stubs: dict | None = None) -> dict:
    """`summary` (of `model`, modified and returned) with its shape-read figures counted at
    `shapes` when `model` leaves them dynamic: shape inference only, on a weightless form
    (`stubs`: `model`'s `convert.constant_placeholders`, when the caller has them)."""
    if not leaves_dynamic(model, shapes):
        return summary
    # The energy estimate prices MACs and activations too: at the same shapes, or it reads zeros.
    # `summary`'s weight bytes are `model`'s: the frozen copy's dims-only stand-ins need not be summed again.
    summary.update(counted_figures(_frozen_weightless(model, shapes, stubs), weight_bytes=summary.get("weight_bytes")))
    summary["macs_shapes"] = {name: list(shape) for name, shape in shapes.items()}
    return summary


def _frozen_weightless(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], stubs: dict | None) -> onnx.ModelProto:
    """`model` with its inputs frozen at `shapes`, shape-inferred (not checked again), each large
    weight a dims-only initializer: what counting reads, without copying a weight's bytes."""
    # Without the main graph's value_info, which would contradict the frozen interface.
    skeleton, moved = stand_in_weights(model, value_info=False, constants=True, stubs=stubs)
    frozen = inferred_skeleton(freeze_input_shapes(skeleton, shapes, in_place=skeleton is not model))
    declared = {value.name for value in model.graph.input}
    inputs = [value for value in frozen.graph.input if value.name not in moved or value.name in declared]
    del frozen.graph.input[:]
    frozen.graph.input.extend(inputs)
    frozen.graph.initializer.extend(onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type)
                                    for t in model.graph.initializer if t.name in moved)
    return frozen


def summarize_at_shapes(model: onnx.ModelProto, given: Mapping[str, tuple[int, ...]] | None = None) -> dict:
    """`summary.summarize` of `model`, MACs counted at `given` shapes (chosen where not given)."""
    given = dict(given or {})
    summary = summarize(infer_model_shapes(model), size_of=model)
    chosen = choose_input_shapes(model, given, origin="given")
    dynamic = {name: shape for name, shape in chosen.items() if shape.chosen or name in given}
    if not dynamic:
        return summary
    shapes = {name: c.shape for name, c in chosen.items()}
    frozen = infer_model_shapes(freeze_input_shapes(model, shapes))
    at_shapes = summarize(frozen, size=summary["bytes"])
    if at_shapes["macs_unknown"]:
        at_shapes = summarize(_with_runtime_shapes(frozen, shapes), size=summary["bytes"])
    summary.update(macs=at_shapes["macs"], macs_unknown=at_shapes["macs_unknown"],
                   macs_shapes={name: {"shape": list(c.shape), "reason": c.to_dict()["reason"]} for name, c in dynamic.items()})
    return summary


def _with_runtime_shapes(frozen: onnx.ModelProto, shapes: dict) -> onnx.ModelProto:
    """`frozen` with the sizes onnxruntime gives the counted ops' tensors written as value_info."""
    from graphopt.activations import expose_tensors, typed_values
    from graphopt.verify.feeds import split_samples
    from graphopt.verify.runner import make_session, run_samples

    types = typed_values(frozen)
    wanted = sorted({name for node in frozen.graph.node if node.op_type in MAC_OPS
                     for name in (*node.input[:3], *node.output[:1]) if name in types})
    try:
        sample = split_samples(generate_feeds(frozen, shapes))[0]
        values = run_samples(make_session(expose_tensors(frozen, wanted, types)), [sample], wanted)[0]
    except Exception as error:  # a diagnosis: the partial count stands, named in macs_unknown
        logger.info("MACs: onnxruntime could not size the remaining ops: %s", first_line(error))
        return frozen
    sized = onnx.ModelProto()
    sized.CopyFrom(frozen)
    known = {value.name: value for value in sized.graph.value_info}
    for name, array in values.items():
        value = known.get(name)
        if value is None:
            value = sized.graph.value_info.add()
            value.CopyFrom(types[name])
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in getattr(array, "shape", ()):
            dims.add().dim_value = int(size)
    return sized
