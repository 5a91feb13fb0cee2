"""The `fp16` pass: float32 weights and activations stored and computed as float16, within a budget."""

from __future__ import annotations

import dataclasses
import fnmatch

import numpy as np
import onnx
import onnx_graphsurgeon as gs

import graphopt
from graphopt import convert, graph_queries
from graphopt.activations import capture_activations
from graphopt.errors import UsageError
from graphopt.model import infer_model_shapes
from graphopt.verify.feeds import generate_feeds
from graphopt.verify.metrics import Budget, output_metrics
from graphopt.verify.runner import stacked_outputs
from graphopt_plugins.fp16.casts import fold_cast_chains
from graphopt_plugins.fp16.convert import Conversion, convert_graph, has_float16, restore_names

__all__ = ["ConvertToFloat16", "DEFAULT_BLOCK_OPS"]

# Kept float32 whatever their schema allows: index and box arithmetic that float16 cannot hold
# exactly (Range, TopK, NonMaxSuppression, RoiAlign), and running sums that overflow 65504.
DEFAULT_BLOCK_OPS = ("Range", "TopK", "NonMaxSuppression", "RoiAlign", "CumSum", "ReduceSum", "ReduceSumSquare",
                     "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp")


class ConvertToFloat16(graphopt.Pass):
    """Converts float32 weights and activations to float16; the model's inputs and outputs stay float32.

    Every node whose schema admits float16 for its float32 inputs computes in float16; weights and
    Constant values are stored as float16, clamped to ±65504. Casts sit at the boundaries: after
    each float32 graph input, before each graph output, around each node kept float32, and at
    the interface of If/Loop/Scan bodies, which are converted inside the same way. Slots of fixed
    type (Resize's scales) stay float32, and so do the ops in `block_ops` (Range, TopK,
    NonMaxSuppression, RoiAlign, CumSum, the summing reductions) and nodes matching `keep`.
    A kept node's float32 weight that float16 holds exactly is stored float16 behind one Cast.
    Cast→Cast chains left behind are folded, and each float16 tensor takes back its original's
    name where that is free, so the only bytes added are the boundary Casts. With `auto`, if the result misses the budget, nodes
    are ranked by sensitivity (how much each adds to the relative error of what it reads, on the
    calibration data) and the fewest most sensitive ones are kept float32, found by bisection.
    Halves the bytes of the weights. It is not faster on x86 CPUs without native float16
    arithmetic: onnxruntime's CPU kernels compute most float16 ops by casting to float32 and back.
    Does not fire on a model that already holds float16 tensors. Lossy: held to `budget`.
    """

    name = "fp16"
    lossless = False
    after = ("cleanup", "fuse", "factorize", "prune")
    before = ("quantize",)

    @dataclasses.dataclass
    class Options:
        budget: str | None = "cos=0.999"  # accuracy budget of the conversion (cos=…, sqnr=…)
        block_ops: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_BLOCK_OPS))  # op types kept float32
        keep: list[str] = dataclasses.field(default_factory=list)  # node-name globs kept float32
        auto: bool = True  # keep the most sensitive nodes float32 until the budget holds (bisection)
        max_samples: int = 16  # samples the budget is checked on
        sensitivity_samples: int = 2  # samples the per-node sensitivity is measured on

        def __post_init__(self):
            if self.max_samples < 1 or self.sensitivity_samples < 1:
                raise ValueError("max_samples and sensitivity_samples must be >= 1")
            try:
                Budget.parse(self.budget)
            except UsageError as error:
                raise ValueError(str(error)) from error

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        options = self.options
        if has_float16(graph):
            return graphopt.PassResult(changed=False, stats={"already_float16": True})
        model = ctx.proto()
        samples, origin = ctx.fitting_data(options.max_samples)
        if samples is None:
            samples, origin = generate_feeds(model, seed=ctx.seed, samples=4), "generated"
        budget = Budget.parse(options.budget) or ctx.budget or Budget(cos=0.999)
        user_keep = {index for index, node in enumerate(model.graph.node)
                     if any(fnmatch.fnmatchcase(node.name, pattern) for pattern in options.keep)}
        reference = stacked_outputs(model, samples)
        candidate, conversion = self._build(model, ctx.opset, user_keep)
        if not conversion.nodes:
            return graphopt.PassResult(changed=False, stats={"converted_nodes": 0})
        metrics = _worst(reference, stacked_outputs(candidate, samples), budget)
        kept: list[int] = []
        stats: dict = {"budget": budget.describe(), "data": origin, "sensitivity_evaluations": 0}
        if not metrics["ok"] and options.auto:
            small = {name: values[: options.sensitivity_samples] for name, values in samples.items()}
            ranking = _sensitivity_ranking(model, candidate, conversion, small)
            kept, metrics, stats["sensitivity_evaluations"] = self._bisect(model, ctx.opset, user_keep, ranking, reference, samples, budget)
        if not metrics["ok"]:
            stats.update(converted_nodes=0, cosine=metrics["cosine"], reason=f"misses {budget.describe()} even with auto")
            ctx.logger.info("fp16: nothing converted (%s)", stats["reason"])
            return graphopt.PassResult(changed=False, stats=stats)
        conversion = convert_graph(graph, ctx.opset, set(options.block_ops), user_keep | set(kept))
        stats["cast_chains_folded"] = fold_cast_chains(graph)
        graph_queries.remove_dead_nodes(graph)
        restore_names(graph, conversion)
        graph_queries.toposort(graph)
        stats.update(converted_nodes=conversion.nodes, weights_converted=conversion.weights, clamped_values=conversion.clamped_values,
                     weights_stored_half=conversion.stored_half,
                     casts_in=conversion.casts_in, kept_float32=[model.graph.node[i].name or f"#{i}" for i in sorted(kept)],
                     cosine=metrics["cosine"], sqnr_db=metrics["sqnr_db"])
        ctx.logger.info("fp16: %d nodes converted, %d kept float32, cosine %.6f", conversion.nodes, len(kept), metrics["cosine"])
        return graphopt.PassResult(changed=conversion.nodes > 0, stats=stats)

    def _build(self, model: onnx.ModelProto, opset: int, keep: set[int]) -> tuple[onnx.ModelProto, Conversion]:
        graph = convert.import_graph(model)
        conversion = convert_graph(graph, opset, set(self.options.block_ops), keep)
        fold_cast_chains(graph)
        graph_queries.remove_dead_nodes(graph)
        graph_queries.toposort(graph)
        candidate = convert.export_model(graph, model)
        convert.release_graph(graph, model)
        return candidate, conversion

    def _bisect(self, model, opset, user_keep, ranking, reference, samples, budget) -> tuple[list[int], dict, int]:
        """The fewest most-sensitive nodes to keep float32 for the budget to hold (its metrics, evaluations)."""
        def evaluate(count: int) -> dict:
            candidate, _ = self._build(model, opset, user_keep | set(ranking[:count]))
            return _worst(reference, stacked_outputs(candidate, samples), budget)

        low, high, evaluations = 0, len(ranking), 1  # low misses the budget (measured), high is all kept
        best = evaluate(high)
        if not best["ok"]:
            return ranking, best, evaluations
        while high - low > 1:
            middle = (low + high) // 2
            metrics = evaluate(middle)
            evaluations += 1
            if metrics["ok"]:
                high, best = middle, metrics
            else:
                low = middle
        return ranking[:high], best, evaluations


def _sensitivity_ranking(model: onnx.ModelProto, candidate: onnx.ModelProto, conversion: Conversion,
                         samples: dict[str, np.ndarray]) -> list[int]:
    """Converted main-graph node indices, most sensitive first: the relative error a node adds to
    the worst one among the tensors it reads, float16 run against float32."""
    nodes = model.graph.node
    produced = [name for index in conversion.switched for name in nodes[index].output if name in conversion.renamed]
    exact = capture_activations(model, samples, produced)
    halved = capture_activations(infer_model_shapes(candidate), samples, [conversion.renamed[name] for name in produced])
    error = {name: _relative_error(exact[name], halved[conversion.renamed[name]]) for name in produced}
    growth = {}
    for index in conversion.switched:
        node = nodes[index]
        out = max((error[name] for name in node.output if name in error), default=0.0)
        read = max((error[name] for name in node.input if name in error), default=0.0)
        # A node reading an overflowed tensor cannot be blamed for its own; one that overflows first is.
        growth[index] = 0.0 if np.isinf(read) else out - read
    return sorted(growth, key=lambda index: -growth[index])


def _relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    if not np.all(np.isfinite(actual)):
        return float("inf")
    scale = float(np.linalg.norm(expected))
    return float(np.linalg.norm(expected - actual)) / scale if scale else float(np.linalg.norm(actual))


def _worst(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], budget: Budget) -> dict:
    cosine, sqnr, violations = 1.0, float("inf"), []
    for name, expected in reference.items():
        if expected.dtype.kind != "f":
            continue
        metrics = output_metrics(expected, outputs[name])
        cosine, sqnr = min(cosine, metrics["cosine"]), min(sqnr, metrics["sqnr_db"])
        violations += budget.violations(name, metrics)
    return {"cosine": cosine, "sqnr_db": sqnr, "ok": not violations}
