"""Cutting a model into stage models at chosen positions, and running them as a chain.

Stage s holds the top-level nodes [bounds[s], bounds[s+1]) with their bodies, the weights
they read, and the interface the cut dictates: its inputs are the tensors crossing the cut
before it, its outputs those crossing the cut after it. A tensor in both is carried through
unchanged (a skip connection over the stage): ONNX lets a graph input be a graph output, so
pass-through needs no node. Interface types come from the whole model's declared or inferred
types, dynamic dims included, so a stage accepts every shape the model accepts.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.errors import InputError
from graphopt.model import check_model
from graphopt.partition.cuts import CutPlan, weights_read
from graphopt.verify.runner import make_session, run_samples

__all__ = ["extract_stages", "run_chain"]


def extract_stages(model: onnx.ModelProto, cut_plan: CutPlan, bounds: tuple[int, ...]) -> list[onnx.ModelProto]:
    """One checked ModelProto per stage (full checker); raises InputError naming a stage that fails it."""
    types = _declared_types(model)
    weights = {t.name: t for t in model.graph.initializer}
    sparse = {t.values.name: t for t in model.graph.sparse_initializer}
    reads = weights_read(model)
    last = len(bounds) - 2
    stages = []
    for index, (start, end) in enumerate(zip(bounds, bounds[1:])):
        inputs = cut_plan.model_inputs if index == 0 else cut_plan.crossing[start]
        outputs = cut_plan.model_outputs if index == last else cut_plan.crossing[end]
        used = dict.fromkeys(name for names in reads[start:end] for name in names)
        graph = onnx.helper.make_graph(
            [model.graph.node[i] for i in range(start, end)],
            f"{model.graph.name or 'model'}_stage_{index}",
            [_typed(types, name, index) for name in inputs],
            [_typed(types, name, index) for name in outputs],
            initializer=[weights[name] for name in used if name in weights],
            sparse_initializer=[sparse[name] for name in used if name in sparse],
        )
        stage = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                       functions=list(model.functions))
        for field in ("producer_name", "producer_version", "domain", "model_version"):
            setattr(stage, field, getattr(model, field))
        onnx.helper.set_model_props(stage, {p.key: p.value for p in model.metadata_props})
        check_model(stage, full=True, path=f"stage {index}")
        stages.append(stage)
    return stages


def run_chain(stages: list[onnx.ModelProto], samples: list[dict[str, np.ndarray]], *,
              optimize: bool = False, threads: int = 1) -> list[dict[str, np.ndarray]]:
    """Each sample through the stages in turn, one session per stage; the last stage's outputs."""
    sessions = [make_session(stage, optimize=optimize, threads=threads) for stage in stages]
    results = []
    for sample in samples:
        values = dict(sample)
        for session in sessions:
            feeds = {value.name: values[value.name] for value in session.get_inputs()}
            values = run_samples(session, [feeds])[0]
        results.append(values)
    return results


def _declared_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    found = {}
    for value in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if value.type.WhichOneof("value") is not None:
            found[value.name] = value
    return found


def _typed(types: dict[str, onnx.ValueInfoProto], name: str, stage: int) -> onnx.ValueInfoProto:
    if name not in types:
        raise InputError(f"tensor '{name}' at the edge of stage {stage} has no known type; shape inference could not type it")
    value = onnx.ValueInfoProto()
    value.CopyFrom(types[name])
    return value
