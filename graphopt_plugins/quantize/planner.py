"""Decides which targets end up quantized, and why the others stay float.

In order: calibrate the activation ranges (static); time each layer float vs int8 and keep
float where int8 loses (`latency=auto`); measure accuracy and, if the budget fails, keep the
most harmful layers float (`auto`); finally time the whole model against float, interleaved,
and drop the least profitable layers until it is not slower (or give up: nothing changes).
Every decision lands in the per-layer table of the pass's stats.

Targets that read one weight (an unrolled recurrence reuses a matrix at every step) form one
unit: quantized or kept float together, so the model never holds that weight twice (float for
some readers, int8 for others); a unit's latency is the sum of its layers'.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import convert, graph_queries
from graphopt import latency as graphopt_latency
from graphopt.activations import iter_activations
from graphopt.verify.feeds import split_samples
from graphopt.verify.runner import stacked_outputs
from graphopt_plugins.quantize.accuracy import fit_to_budget, worst_metrics
from graphopt_plugins.quantize.bias_correction import bias_shifts
from graphopt_plugins.quantize.calibration import collect_ranges
from graphopt_plugins.quantize.judging import SampleJudge, judged_outputs
from graphopt_plugins.quantize.kernels import FULL_RANGE, weight_qmax
from graphopt_plugins.quantize.latency import constant_tensors, layer_models
from graphopt_plugins.quantize.numerics import weight_sqnr_db
from graphopt_plugins.quantize.sensitivity import default_workers, sweep
from graphopt_plugins.quantize.stored_weights import NOTHING_STORED, store_kept_weights, store_weights
from graphopt_plugins.quantize.smoothing import channel_extremes, smooth, smoothing_sites
from graphopt_plugins.quantize.regions import find_region, insert_pairs, shared_ranges
from graphopt_plugins.quantize.rewrite import UniqueNames, activation_tensors, apply_dynamic, apply_static, apply_weight_only, quantize_embeddings
from graphopt_plugins.quantize.targets import Target, find_embeddings, find_targets
from graphopt_plugins.quantize.weight_rounding import fitted_weights

__all__ = ["Planner"]

logger = logging.getLogger(__name__)
_GUARD_ROUNDS = 4
# The whole model must beat float by this much as measured ("never slower" must survive the next timing).
_GUARD_MARGIN = 0.97
_BUILT_KEPT = 3  # candidate models kept built (a few MB each)
# A timing ends after two rounds when int8 is this far past its margin either way (a layer's
# medians move more than a whole model's); a close call takes every round, as it always did.
_PLAIN_LAYER, _PLAIN_MODEL = 0.25, 0.10


class Planner:
    def __init__(self, model: onnx.ModelProto, targets: list[Target], options, calibration, evaluation, budget, seed: int,
                 track=lambda items, desc, total: items, latency=None, slices=(), layer_times=None):
        self.model, self.targets, self.options = model, targets, options
        self.layer_times = {} if layer_times is None else layer_times  # layers alike timed once; shared by planners of one model
        self.latency = latency if latency is not None else graphopt_latency.backend("host-ort")  # where int8 vs float is timed
        self.track = track  # PassContext.track: a progress bar over the long loops, when the run shows one
        self.calibration, self.evaluation, self.budget, self.seed = calibration, evaluation, budget, seed
        self.slices = tuple(slices)  # parts of outputs the budget holds on too (PassContext.output_slices)
        self.signed = options.activations == "int8"
        # Weights that an integer kernel multiplies: held to 7 bits where its int16 pair sums saturate.
        integer_kernels = options.mode in ("static", "dynamic")
        self.qmax = weight_qmax(options.reduce_range, self.signed and options.mode == "static") if integer_kernels else FULL_RANGE
        self.ranges: dict[str, tuple[float, float]] = {}
        self.embeddings = 0
        self.bias_shift: dict[int, np.ndarray] = {}  # bias correction per target index (static)
        self.prepared: dict[int, tuple] = {}  # int8 weights made ahead (rounding=adaptive, per-tensor scales)
        self.extremes: dict = {}  # per LayerNorm output read by a quantized MatMul: per-channel (min, max), for `smooth`
        self.stored = NOTHING_STORED  # (kept-float layers whose weights are stored int8, form) (`stored_weights.py`)
        self.region_outputs: set[str] = set()  # outputs of the activation-only ops that run in 8 bits (full_graph)
        self._built: dict[tuple, onnx.ModelProto] = {}  # the last few candidates built, by plan
        self._judged: dict[tuple, dict] = {}  # metrics by (plan, deployed only)
        self._refused: dict[tuple, dict] = {}  # plans the search refused at their first sample that broke the budget
        self._sample_judge: SampleJudge | None = None
        self._hardest = 0  # the sample that broke the last refused plan: the next plan runs it first
        self._measured: dict[int, float] = {}  # unit -> its sensitivity (the sweep's, for both searches)
        self.workers = options.workers or default_workers()  # sessions run side by side (same figures)
        self.sample_runs = 0  # candidate samples run to judge plans (the sensitivity sweep's aside)
        self.units = _shared_weight_units(targets)  # first index -> every target index reading that weight
        constants = constant_tensors(model)
        self.rows = {t.index: {"node": t.name, "op": t.op, "weight_sqnr_db": _weight_sqnr(model, t, constants, self.qmax),
                               "sensitivity_sqnr_db": None, "float_ms": None, "int8_ms": None,
                               "decision": "quantized", "why": "within budget"} for t in targets}

    # -- building candidates ---------------------------------------------------------------
    def rewrite(self, graph: gs.Graph, targets: list[Target]) -> None:
        smoothed = {}
        if self.extremes and self.options.mode in ("static", "dynamic"):
            sites = smoothing_sites(graph, {t.name for t in targets})
            smoothed = smooth(graph, sites, self.extremes, self.options.smooth, {t.name for t in targets})
        if self.options.mode == "static":
            region = self._region(graph, targets)
            ranges = {**self.ranges, **smoothed}
            ranges = shared_ranges(ranges, region) if region else ranges
            apply_static(graph, targets, ranges, self.signed, self.qmax, self.bias_shift, self.prepared)
            if region:
                insert_pairs(graph, region, ranges, self.signed, UniqueNames(graph))
        elif self.options.mode == "dynamic":
            apply_dynamic(graph, targets, self.qmax, self.prepared)
        else:
            apply_weight_only(graph, targets, self.options.weight_bits, self.options.block_size)
        graph_queries.remove_dead_nodes(graph)
        graph_queries.toposort(graph)

    def _region(self, graph: gs.Graph, targets: list[Target]):
        """The activation-only ops that run in 8 bits with `targets` (full_graph), else None."""
        if not self.options.full_graph or not targets:
            return None
        return find_region(graph, {t.relu_output if t.relu_output and not self.signed else t.output for t in targets})

    def apply(self, graph: gs.Graph, chosen: list[int]) -> None:
        targets, _ = find_targets(graph, self.options.op_types, self.options.include, self.options.exclude)
        wanted, stored = set(chosen), set(self.stored[0])
        embeddings = find_embeddings(graph, self.options.include, self.options.exclude) if self.options.embeddings and (chosen or self.stored != NOTHING_STORED) else []
        self.embeddings = quantize_embeddings(graph, embeddings)  # appends nodes: target indices stay valid
        if self.stored != NOTHING_STORED:  # appends nodes too, so first: the mode's rewrite may remove some
            store_weights(graph, [t for t in targets if t.index in stored], self.stored[1], self.options.exclude)
        self.rewrite(graph, [t for t in targets if t.index in wanted])

    def build(self, chosen: list[int]) -> onnx.ModelProto:
        key = self._key(chosen)
        if key in self._built:  # the plan the search settled on is built again by the guard and mode=auto
            return self._built[key]
        graph = convert.import_graph(self.model)
        self.apply(graph, chosen)
        candidate = convert.export_model(graph, self.model)
        convert.release_graph(graph, self.model)  # evaluated next: its session must not sit on this graph's weights
        self._built = {**dict(list(self._built.items())[-(_BUILT_KEPT - 1):]), key: candidate}
        return candidate

    # -- the decisions ---------------------------------------------------------------------
    def plan(self) -> tuple[list[int], dict]:
        started = time.perf_counter()
        stats: dict = {"calibration": self.options.calibrate if self.options.mode == "static" else None}
        if self.options.smooth > 0 and self.options.mode in ("static", "dynamic"):
            sites = smoothing_sites(convert.import_graph(self.model), {t.name for t in self.targets})
            self.extremes = channel_extremes(self.model, self.calibration, sites) if sites else {}
            stats["smoothed_tensors"] = len(sites)
        if self.options.mode == "static":
            names = activation_tensors(self.targets, "static", self.signed)
            region = self._region(convert.import_graph(self.model), self.targets)
            names = list(dict.fromkeys(names + (region.tensors if region else [])))
            stats["int8_activation_ops"] = len(region.nodes) if region else 0
            self.region_outputs = {t.name for node in region.nodes for t in node.outputs} if region else set()
            self.ranges = collect_ranges(self.model, self.calibration, names, self.options.calibrate,
                                         self.options.percentile, self.signed, self.seed, self.track)
        adaptive, per_tensor = self.options.rounding == "adaptive", self.options.weight_granularity == "per-tensor"
        if self.options.mode in ("static", "dynamic") and (adaptive or per_tensor):
            self.prepared, rounding = fitted_weights(self.model, self.targets, self.calibration, self.qmax, per_tensor, adaptive, self.seed)
            stats.update(rounding)
        if self.options.mode == "static" and self.options.bias_correction:
            finals = {t.index: t.relu_output if t.relu_output and not self.signed else t.output for t in self.targets}
            self.bias_shift = bias_shifts(self.model, self.build([t.index for t in self.targets]), self.calibration,
                                          self.targets, finals)
            self._built = {}  # built without the shifts: the plans judged next must carry them
            stats["bias_corrected"] = len(self.bias_shift)
        chosen = [t.index for t in self.targets]
        # `--latency-on none` times nothing: every layer is decided by accuracy alone.
        timed = self.options.latency == "auto" and self.options.mode != "weight-only" and self.latency.measures
        stats["latency_backend"] = self.latency.name if timed else None
        if timed:
            chosen = self._layer_latency(chosen)
        reference = stacked_outputs(self.model, self.evaluation, optimize=True)
        self._sample_judge = SampleJudge(reference, self.budget)
        evaluate = lambda subset, deployed_only=False, searching=False: self._evaluate(reference, subset, deployed_only, searching)  # noqa: E731
        if self.options.auto:
            small = {k: v[: self.options.sensitivity_samples] for k, v in self.evaluation.items()}
            small_reference = {k: v[: self.options.sensitivity_samples] for k, v in reference.items()}
            sensitivities = lambda units: self._sensitivities(units, small, small_reference)  # noqa: E731
            units = [unit for unit in self.units if unit in set(chosen)]
            # The search judges the int8 kernels as deployed; the plan it settles on must also pass
            # unfused (as the verifier runs it), else the search runs again judging both forms.
            # A plan it refuses is refused at its first sample that breaks the budget (`judging.py`).
            quantized, metrics, sensitivity, tried = fit_to_budget(lambda subset: evaluate(self._members(subset), True, True), units,
                                                                   sensitivities)
            if quantized and not (metrics := evaluate(self._members(quantized), searching=True))["ok"]:
                quantized, metrics, sensitivity, again = fit_to_budget(lambda subset: evaluate(self._members(subset), searching=True), units,
                                                                       sensitivities, at_least=len(units) - len(quantized))
                tried += again
            for unit, sqnr in sensitivity.items():
                for index in self.units[unit]:
                    self.rows[index]["sensitivity_sqnr_db"] = _rounded(sqnr)
            quantized = self._members(quantized)
            for index in set(chosen) - set(quantized):
                self._keep(index, f"too harmful for budget {self.budget.describe()}")
            chosen, stats["plans_evaluated"] = quantized, tried
        else:
            metrics = evaluate(chosen)
        if timed and chosen:
            chosen, stats["latency"] = self._guard(chosen)
            if chosen:
                metrics = evaluate(chosen)
            if chosen and not metrics["ok"]:  # fewer int8 layers moved the Q/DQ boundaries: can be worse
                chosen, metrics = self._refit(chosen, evaluate)
        if self.options.mode != "weight-only":
            metrics, stats["stored_weights"] = store_kept_weights(self, chosen, metrics, evaluate, timed)
        if self.options.auto:
            stats.update(plans_refused_early=len(self._refused), plan_sample_runs=self.sample_runs)
        stats.update(embeddings=self.embeddings if chosen or self.stored != NOTHING_STORED else 0, weight_qmax=self.qmax, quantized=len(chosen), kept_float=len(self.targets) - len(chosen),
                     stored_int8=len(self.stored[0]), cosine=metrics["cosine"], cosine_predicted=metrics.get("cosine_predicted", metrics["cosine"]),
                     sqnr_db=_rounded(metrics["sqnr_db"]), budget=self.budget.describe(),
                     layers=[self.rows[t.index] for t in self.targets], seconds=round(time.perf_counter() - started, 2))
        if not chosen and self.stored == NOTHING_STORED:
            stats["reason"] = "every layer kept float"
        return chosen, stats

    def _refit(self, chosen: list[int], evaluate) -> tuple[list[int], dict]:
        """The plan the latency guard left, with its most harmful layers kept float until it meets the budget."""
        units = [unit for unit in self.units if unit in set(chosen)]
        sensitivity = {unit: self.rows[unit].get("sensitivity_sqnr_db") for unit in units}
        kept, metrics, _, _ = fit_to_budget(lambda subset: evaluate(self._members(subset), searching=True), units,
                                            lambda some: {unit: sensitivity[unit] if sensitivity[unit] is not None else -math.inf
                                                          for unit in some})
        refit = self._members(kept)
        for index in set(chosen) - set(refit):
            self._keep(index, f"too harmful for budget {self.budget.describe()} once the latency guard dropped others")
        return refit, metrics

    def _sensitivities(self, units: list[int], samples: dict, reference: dict) -> dict[int, float]:
        """Each unit's output SQNR with it alone quantized (`sensitivity.py`), measured once per unit."""
        missing = [unit for unit in units if unit not in self._measured]
        self._measured.update(sweep(missing, lambda unit: self.build(self._members([unit])), samples, reference,
                                    self.workers, self.track))
        return {unit: self._measured[unit] for unit in units}

    def _members(self, units) -> list[int]:
        """Every target index of `units` (first indices of shared-weight units), in graph order."""
        return sorted(index for unit in units for index in self.units[unit])

    def _evaluate(self, reference: dict, chosen: list[int], deployed_only: bool = False, searching: bool = False) -> dict:
        """The worse of the int8 kernels (as deployed) and the unfused Q/DQ (as the verifier runs
        it) of the plan quantizing `chosen`; the deployed form alone with `deployed_only`.
        `searching`: only whether the plan holds matters, so a plan is refused at its first
        sample that breaks the budget, its metrics that sample's; a plan that holds is judged whole."""
        key = self._key(chosen)
        if (key, False) in self._judged or (deployed_only and (key, True) in self._judged):
            return self._judged.get((key, False)) or self._judged[(key, True)]
        if searching and key in self._refused:
            return self._refused[key]
        deployed = self._judged.get((key, True))
        if deployed is None:
            deployed = self._judge(reference, chosen, True, searching)
            if deployed is None:
                return self._refused[key]
            self._judged[(key, True)] = deployed
        if not deployed["ok"] or deployed_only:
            return deployed
        verified = self._judge(reference, chosen, False, searching)
        if verified is None:
            return self._refused[key]
        self._judged[(key, False)] = verified if not verified["ok"] or verified["cosine"] < deployed["cosine"] else deployed
        return self._judged[(key, False)]

    def _judge(self, reference: dict, chosen: list[int], optimize: bool, searching: bool) -> dict | None:
        """`worst_metrics` of the plan as deployed (`optimize`) or unfused; None when `searching`
        and one sample broke the budget (the refusal is then in `_refused`)."""
        outputs, broken, refusal, runs = judged_outputs(self.build(chosen), self.evaluation, self._sample_judge if searching else None,
                                                        optimize=optimize, first=self._hardest, workers=self.workers)
        self.sample_runs += runs
        if outputs is not None:
            return worst_metrics(reference, outputs, self.budget, self.slices)
        self._hardest = broken
        self._refused[self._key(chosen)] = dict(refusal, refused_at_sample=broken)
        return None

    def timing_feed(self) -> dict[str, np.ndarray]:
        """The first evaluation sample, as the models are timed on it (a scalar input stays an array)."""
        return {value.name: np.asarray(self.evaluation[value.name][0]) for value in self.model.graph.input if value.name in self.evaluation}

    def _key(self, chosen) -> tuple:
        """A plan's identity: its int8 layers and the float layers whose weights are stored int8."""
        return tuple(sorted(chosen)), self.stored

    def _keep(self, index: int, why: str) -> None:
        self.rows[index].update(decision="float", why=why)

    def _integer_boundaries(self) -> dict[int, tuple[bool, bool]]:
        """Per target: (its input comes from another target, every reader of its output is a target)."""
        if self.options.mode != "static":
            return {t.index: (False, False) for t in self.targets}
        final = {t.index: t.relu_output if t.relu_output and not self.signed else t.output for t in self.targets}
        produced = set(final.values()) | self.region_outputs
        activation_readers = {(t.index, t.activation) for t in self.targets}
        # an activation-only op of the 8-bit region reads 8 bits too
        activation_readers |= {(i, name) for i, node in enumerate(self.model.graph.node)
                               if any(o in self.region_outputs for o in node.output) for name in node.input}
        readers: dict[str, list[int]] = {}
        for index, node in enumerate(self.model.graph.node):
            for name in node.input:
                readers.setdefault(name, []).append(index)
        outputs = {value.name for value in self.model.graph.output}
        found = {}
        for t in self.targets:
            out = final[t.index]
            users = readers.get(out, [])
            found[t.index] = (t.activation in produced,
                              bool(users) and out not in outputs and all((i, out) in activation_readers for i in users))
        return found

    def _layer_latency(self, chosen: list[int]) -> list[int]:
        shapes = self._input_shapes()
        boundaries = self._integer_boundaries()
        kept, timed_alike = [], self.layer_times  # layers alike (op, attributes, shapes, boundaries) are timed once
        for target in self.track(self.targets, "quantize: timing layers", len(self.targets)):
            shape = shapes.get(target.activation)
            alike = _layer_signature(self.model.graph.node[target.index], target, shape, boundaries[target.index])
            if alike not in timed_alike:
                pair = layer_models(self.model, target.index, target.relu_output, shape,
                                    lambda g: self.rewrite(g, find_targets(g, [target.op], [], [])[0]),
                                    *boundaries[target.index]) if shape else None
                timed_alike[alike] = None if pair is None else self._medians(*pair, "quantize: layer", seconds=0.12, rounds=3,
                                                                              margin=(self.options.latency_margin, _PLAIN_LAYER))
            if timed_alike[alike] is None:
                continue
            float_ms, int8_ms = timed_alike[alike]
            self.rows[target.index].update(float_ms=round(float_ms, 4), int8_ms=round(int8_ms, 4))
        for members in self.units.values():  # a shared weight is int8 for all its readers or none
            timed = [self.rows[i] for i in members if self.rows[i]["float_ms"] is not None]
            float_ms, int8_ms = sum(r["float_ms"] for r in timed), sum(r["int8_ms"] for r in timed)
            if not timed or int8_ms <= self.options.latency_margin * float_ms:
                kept.extend(members)
                continue
            for index in members:
                self._keep(index, f"int8 slower on {self.latency.name} ({int8_ms:.3f} vs {float_ms:.3f} ms"
                                  f"{f' over {len(members)} readers of one weight' if len(members) > 1 else ''})")
        return [index for index in chosen if index in set(kept)]

    def _medians(self, float_model, int8_model, float_feed, int8_feed, purpose: str, seconds: float, rounds: int,
                 margin: tuple[float, float]) -> tuple[float, float]:
        """(float ms, int8 ms); `margin` (the decision's ratio, how far past it is plain) ends a plain call early."""
        at, plain = margin
        decided = lambda ms: bool(ms[0]) and not (1 - plain) * at < ms[1] / ms[0] < (1 + plain) * at  # noqa: E731
        timings = self.latency.compare({"float": float_model, "int8": int8_model}, {"float": float_feed, "int8": int8_feed},
                                       seconds=seconds, rounds=rounds, purpose=purpose, decided=decided)
        return timings["float"]["median_ms"], timings["int8"]["median_ms"]

    def _input_shapes(self) -> dict[str, tuple[int, ...]]:
        first = split_samples(self.calibration)[0]
        first = {name: value[None] for name, value in first.items()}
        names = list(dict.fromkeys(t.activation for t in self.targets))
        values = next(iter_activations(self.model, first, names))
        return {name: tuple(np.asarray(value).shape) for name, value in values.items()}

    def _guard(self, chosen: list[int]) -> tuple[list[int], dict]:
        """Drops the layers that gain least until the whole model is not slower than float."""
        feed = self.timing_feed()
        gain = {unit: sum((self.rows[i]["float_ms"] or 0.0) - (self.rows[i]["int8_ms"] or 0.0) for i in members)
                for unit, members in self.units.items()}
        history = []
        for _ in range(_GUARD_ROUNDS):
            float_ms, int8_ms = self._medians(self.model, self.build(chosen), feed, feed, "quantize: whole model", seconds=2.0,
                                             rounds=5, margin=(_GUARD_MARGIN, _PLAIN_MODEL))
            history.append({"layers": len(chosen), "float_ms": round(float_ms, 3), "quantized_ms": round(int8_ms, 3)})
            if int8_ms <= _GUARD_MARGIN * float_ms:
                return chosen, {"float_ms": history[-1]["float_ms"], "quantized_ms": history[-1]["quantized_ms"],
                                "speedup": round(float_ms / int8_ms, 3), "rounds": history}
            units = [unit for unit in self.units if unit in set(chosen)]
            drop = set(self._members(sorted(units, key=lambda unit: gain[unit])[: max(1, len(units) // 4)]))
            for index in drop:
                self._keep(index, "dropped: the whole model was slower than float")
            chosen = [i for i in chosen if i not in drop]
            if not chosen:
                break
        for index in chosen:
            self._keep(index, "the whole model stayed slower than float")
        return [], {"rounds": history, "gave_up": True}


def _shared_weight_units(targets: list[Target]) -> dict[int, list[int]]:
    """{first target index: the indices of every target reading the same weight}, in graph order."""
    readers: dict[str, list[int]] = {}
    for target in targets:
        readers.setdefault(target.weight or f"#{target.index}", []).append(target.index)
    return {members[0]: members for members in readers.values()}


def _layer_signature(node: onnx.NodeProto, target: Target, shape, boundaries) -> tuple:
    """What a layer's float and int8 times depend on: two layers alike here time alike."""
    attributes = tuple((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)
    return (target.op, attributes, target.weight_shape, shape, target.relu_output is not None, len(node.input), boundaries)


def _weight_sqnr(model: onnx.ModelProto, target: Target, constants: dict, qmax: int) -> float | None:
    tensor = constants.get(model.graph.node[target.index].input[1])
    return None if tensor is None else _rounded(weight_sqnr_db(onnx.numpy_helper.to_array(tensor), target.axis, qmax))


def _rounded(value):
    return None if value is None else (value if math.isinf(value) else round(float(value), 2))
