"""Intermediate tensors of a model on real inputs: what data-aware passes fit to.

The model runs in onnxruntime as written (optimizations off), one sample at a time, so memory
holds one sample's intermediates plus the tensors a pass asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from graphopt.proto_walk import copy_model
from graphopt.verify.feeds import split_samples
from graphopt.verify.runner import make_session, run_samples

__all__ = ["typed_values", "expose_tensors", "capture_activations", "iter_activations"]


def typed_values(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The main graph's tensors whose element type is known (value_info and outputs), by name."""
    values = {}
    for value in list(model.graph.value_info) + list(model.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            values[value.name] = value
    return values


def expose_tensors(model: onnx.ModelProto, names: Iterable[str], types: Mapping[str, onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:
    """A copy of `model` with the named intermediate tensors added as graph outputs, typed where
    their type is known; a KeyError names one no node of the main graph makes (an input or an
    initializer, or no tensor at all)."""
    types = typed_values(model) if types is None else types
    exposed = copy_model(model)
    present = {output.name for output in exposed.graph.output}
    made = None
    for name in names:
        if name in present:
            continue
        if name in types:
            exposed.graph.output.append(types[name])
        else:
            made = {output for node in model.graph.node for output in node.output} if made is None else made
            if name not in made:
                raise KeyError(f"no node of the main graph makes tensor {name!r}: is it an input or an initializer?")
            # ONNX's inference does not type the outputs of ops it has no schema for (the
            # com.microsoft ops of onnxruntime's transformer optimizer); onnxruntime does.
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
        present.add(name)
    return exposed


def iter_activations(model: onnx.ModelProto, samples: Mapping[str, np.ndarray], names: Sequence[str]):
    """Yields, per sample of `samples` (`{input name: (N, *shape) array}`), `{name: value}` for `names`."""
    inputs = {value.name: samples[value.name] for value in model.graph.input if value.name in samples}
    feed_names = set(inputs)
    wanted = [name for name in names if name not in feed_names]
    session = make_session(expose_tensors(model, wanted))
    for sample in split_samples(inputs):
        values = run_samples(session, [sample], wanted)[0] if wanted else {}
        values.update({name: sample[name] for name in names if name in feed_names})
        yield values


def capture_activations(model: onnx.ModelProto, samples: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """`{name: array (N, *shape)}`: each named tensor over all N samples, stacked."""
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for values in iter_activations(model, samples, names):
        for name in names:
            collected[name].append(values[name])
    return {name: np.stack(arrays) for name, arrays in collected.items()}
