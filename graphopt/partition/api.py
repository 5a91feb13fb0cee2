"""`graphopt.partition`: a model cut into K pipeline stages, verified as a chain.

The flow: prepare the model (checked, shape-inferred), choose verification inputs, measure
each node's cost and each crossing tensor's bytes on the first sample, plan the cuts, extract
and check the stages, run them as a chain on every sample against the whole model, and only
then hand back (or write) anything.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx

from graphopt import __version__
from graphopt.api import prepare_feeds, prepare_model
from graphopt.errors import UsageError, VerificationError
from graphopt.partition.constants import constants_as_initializers
from graphopt.partition.costs import node_latency, node_macs, tensor_bytes, weight_bytes_by_node
from graphopt.partition.cuts import crossing_sets
from graphopt.partition.manifest import MANIFEST_SCHEMA, check_output_dir, describe_values, stage_file, write_partition
from graphopt.partition.planner import plan_cuts
from graphopt.partition.refine import plan_by_measured_stages
from graphopt.partition.stages import extract_stages, run_chain
from graphopt.verify import Verifier, generate_feeds, lossless_floor, split_samples

__all__ = ["Partition", "partition", "partition_to_dir", "COST_MODELS", "DEFAULT_CUT_WEIGHT"]

logger = logging.getLogger(__name__)

COST_MODELS = ("latency", "macs")
# Objective weight of crossing bytes: a MiB crossing a cut counts like 1% of the whole
# model's cost on the slowest stage (copying a MiB between processes takes ~1 ms).
DEFAULT_CUT_WEIGHT = 0.01


@dataclasses.dataclass
class Partition:
    stages: list[onnx.ModelProto]
    manifest: dict
    report: dict
    node_costs: list[float]  # what the planner saw, by top-level node (for comparisons)
    cut_bytes: list[int]  # bytes crossing the cut before each node position


def partition(
    model: onnx.ModelProto | str | os.PathLike,
    stages: int = 2,
    *,
    by: str = "latency",
    cut_weight: float = DEFAULT_CUT_WEIGHT,
    max_stage_bytes: int | None = None,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    calibration: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    input_shapes: Mapping[str, Iterable[int]] | None = None,
    seed: int = 0,
    threads: int = 1,
) -> Partition:
    """`model` cut into `stages` pipeline stages; raises VerificationError if the chain differs from the whole.

    `by`: stage cost as measured 1-thread onnxruntime latency ("latency": nodes profiled, then
    the planned stages timed as workers run them and the plan re-made, see
    `graphopt.partition.refine`) or MACs ("macs").
    `cut_weight`: objective weight per MiB crossing a cut, as a fraction of the whole model's
    cost. `max_stage_bytes`: cap on each stage's weight bytes. `inputs`/`calibration`/
    `input_shapes`/`seed`: the verification inputs, as `graphopt.optimize` takes them (the
    first sample also sizes the crossing tensors and times the nodes). `threads`: the
    intra-op threads each stage's worker uses, recorded in the manifest.
    """
    if by not in COST_MODELS:
        raise UsageError(f"--by must be one of {', '.join(COST_MODELS)}; got '{by}'")
    if not isinstance(stages, int) or stages < 1:
        raise UsageError(f"--stages must be a positive integer, got {stages!r}")
    if cut_weight < 0 or (max_stage_bytes is not None and max_stage_bytes <= 0):
        raise UsageError("--cut-weight must be ≥ 0 and --max-stage-bytes > 0")
    source = constants_as_initializers(prepare_model(model))
    feeds, origin = _verification_feeds(source, inputs, calibration, input_shapes, seed)
    samples = split_samples(feeds)
    cuts = crossing_sets(source)
    crossing_names = list(dict.fromkeys(name for names in cuts.crossing for name in names))
    node_outputs = [name for io in cuts.order for name in io.writes] if by == "macs" else []
    sizes, shapes = tensor_bytes(source, samples[0], list(dict.fromkeys(crossing_names + node_outputs)))
    costs = node_latency(source, samples[0]) if by == "latency" else node_macs(source, shapes)
    cut_bytes = [sum(sizes[name] for name in names) for names in cuts.crossing]
    weights = weight_bytes_by_node(source)
    if by == "latency":
        measured = plan_by_measured_stages(source, cuts, costs, cut_bytes, stages, samples[0], cut_weight=cut_weight,
                                           weights=weights, max_stage_bytes=max_stage_bytes)
        plan, stage_models, costs = measured.plan, measured.stages, measured.node_costs
    else:
        plan = plan_cuts(costs, cut_bytes, stages, cut_weight=cut_weight, weights=weights, max_stage_bytes=max_stage_bytes)
        stage_models = extract_stages(source, cuts, plan.bounds)
    logger.info("cuts at %s; stage costs %s; crossing bytes %s", plan.cuts, plan.stage_costs, plan.cut_bytes)
    verification = _verify_chain(source, stage_models, samples, origin)
    manifest = _manifest(source, stage_models, plan, cuts, sizes, weights, by=by, cut_weight=cut_weight,
                         max_stage_bytes=max_stage_bytes, threads=threads, total_cost=sum(plan.stage_costs))
    manifest["verification"] = verification
    report = {
        "schema": "graphopt.partition-report/1",
        "graphopt_version": __version__,
        "stages": [{key: stage[key] for key in ("file", "nodes", "cost", "cost_share", "weight_bytes", "bytes_in", "bytes_out")}
                   for stage in manifest["stages"]],
        "balance": manifest["balance"],
        "crossing_bytes": sum(plan.cut_bytes),
        "verification": verification,
    }
    return Partition(stage_models, manifest, report, costs, cut_bytes)


def partition_to_dir(model: onnx.ModelProto | str | os.PathLike, folder: str | os.PathLike, stages: int = 2, **settings) -> Partition:
    """`partition`, then the stages and manifest.json written into `folder` (all or nothing)."""
    folder = Path(folder)
    check_output_dir(folder, Path(model) if isinstance(model, (str, os.PathLike)) else None)
    result = partition(model, stages, **settings)
    write_partition(folder, result.stages, result.manifest)
    return result


def _verification_feeds(source, inputs, calibration, input_shapes, seed) -> tuple[dict[str, np.ndarray], str]:
    if inputs is not None:
        return prepare_feeds(inputs, source), "file"
    if calibration is not None:
        return prepare_feeds(calibration, source, option="--calibration"), "calibration"
    shapes = {name: tuple(int(d) for d in dims) for name, dims in (input_shapes or {}).items()}
    return generate_feeds(source, shapes, seed=seed), "generated"


def _verify_chain(source: onnx.ModelProto, stage_models: list[onnx.ModelProto], samples: list[dict], origin: str) -> dict:
    """The chain's outputs against the whole model's on every sample (ORT, optimizations off)."""
    verifier = Verifier(samples, precision=lossless_floor(source))
    whole = verifier.outputs(source)
    chained = run_chain(stage_models, samples)
    chained = [{name: values[name] for name in whole[0]} for values in chained]
    verdict = verifier.judge(whole, chained, budget=None)
    bit_exact = all(
        np.array_equal(np.asarray(a[name]), np.asarray(b[name]), equal_nan=np.asarray(a[name]).dtype.kind == "f")
        for a, b in zip(whole, chained) for name in a
    )
    result = {"samples": len(samples), "inputs": origin, "ok": verdict.ok, "bit_exact": bit_exact, "outputs": verdict.outputs}
    if not verdict.ok:
        raise VerificationError(f"the stages chained differ from the whole model: {verdict.summary()}", report={"verification": result})
    return result


def _manifest(source, stage_models, plan, cuts, sizes, weights, *, by, cut_weight, max_stage_bytes, threads, total_cost) -> dict:
    bounds = plan.bounds
    ideal = total_cost / len(stage_models) if stage_models else 0.0
    described = []
    for index, stage in enumerate(stage_models):
        start, end = bounds[index], bounds[index + 1]
        held = {}
        for read in weights[start:end]:
            held.update(read)
        inputs = describe_values(stage.graph.input)
        for value in inputs:
            value["from"] = {"model_input": value["name"]} if index == 0 else {"stage": index - 1, "output": value["name"]}
            value["bytes"] = sizes.get(value["name"])
        outputs = describe_values(stage.graph.output)
        for value in outputs:
            value["bytes"] = sizes.get(value["name"])
        passed = sorted({v["name"] for v in inputs} & {v["name"] for v in outputs})
        described.append({
            "index": index,
            "file": stage_file(index),
            "nodes": end - start,
            "node_range": [start, end],
            "inputs": inputs,
            "outputs": outputs,
            "pass_through": passed,
            "cost": plan.stage_costs[index],
            "cost_share": plan.stage_costs[index] / total_cost if total_cost else None,
            "weight_bytes": sum(held.values()),
            "bytes_in": sum(v["bytes"] or 0 for v in inputs) if index else 0,
            "bytes_out": sum(v["bytes"] or 0 for v in outputs) if index < len(stage_models) - 1 else 0,
        })
    return {
        "schema": MANIFEST_SCHEMA,
        "graphopt_version": __version__,
        "model": {"graph": source.graph.name, "inputs": describe_values(v for v in source.graph.input if v.name in cuts.model_inputs),
                  "outputs": describe_values(source.graph.output)},
        "plan": {"by": by, "cost_unit": "seconds (stage measured at 1 thread, optimizations on)" if by == "latency" else "macs", "cut_weight": cut_weight,
                 "max_stage_bytes": max_stage_bytes, "cuts": list(plan.cuts), "cut_bytes": list(plan.cut_bytes),
                 "bytes_measured_on": "the first verification sample"},
        "balance": {"slowest_stage_cost": max(plan.stage_costs), "ideal_stage_cost": ideal,
                    "slowest_over_ideal": max(plan.stage_costs) / ideal if ideal else None},
        "runtime": {"threads": threads, "providers": ["CPUExecutionProvider"], "graph_optimization": "all"},
        "stages": described,
        "outputs": {name: {"stage": len(stage_models) - 1, "output": name} for name in cuts.model_outputs},
    }
