"""The `factorize` pass: low-rank factorization of MatMul/Gemm/Conv, fitted to real activations."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

import graphopt
from graphopt import convert, graph_queries, tensor_shapes
from graphopt import latency as graphopt_latency
from graphopt.model import infer_model_shapes
from graphopt.speed import slower
from graphopt.statistics import gram_problem, split_held_out
from graphopt.summary import summarize
from graphopt.verify.feeds import split_samples
from graphopt.verify.metrics import Budget, measure_outputs
from graphopt.verify.runner import make_session, run_samples, stacked_outputs
from graphopt_plugins.factorize.latency import LayerTiming, time_layers
from graphopt_plugins.factorize.lowrank import Factorization, round_rank
from graphopt_plugins.factorize.fits import fit_site
from graphopt_plugins.factorize.refit import refit_in_order
from graphopt_plugins.factorize.ranks import first_paying_rank, parse_target, ranks_by_rule, ranks_for_target
from graphopt_plugins.factorize.rewrite import factorize_site
from graphopt_plugins.factorize.sensitivity import measure_sensitivity
from graphopt_plugins.factorize.sites import Site, find_sites, is_factorized
from graphopt_plugins.factorize.statistics import LayerData, collect, conv_geometry

__all__ = ["Factorize"]

_METHODS = ("auto", "data", "svd")
_RULES = ("energy", "rank_ratio", "max_error", "target")
_CONV_MODES = ("channel", "spatial", "input", "auto", "off")
_OPS = ("MatMul", "Gemm", "Conv")
_DEFAULT_BUDGET = Budget(cos=0.99)
_WEAKEST = 1 / 64
logger = logging.getLogger(__name__)


class Factorize(graphopt.Pass):
    """Splits MatMul/Gemm/Conv weights into two low-rank factors where that really saves MACs.

    Rewrites, in the main graph: MatMul and Gemm with a constant 2-D weight W (K×N) into two
    MatMuls X·U·V (bias and beta on the second); dense 2-D Conv into a k×k Cin→r Conv then a
    1×1 r→Cout Conv (`conv=channel`), a 1×1 Cin→r Conv then a k×k r→Cout Conv (`conv=input`),
    whichever of the two leaves less output error per MAC on the data, layer by layer
    (`conv=auto`, the default; channel without data), or into kh×1 then 1×kw Convs
    (`conv=spatial`, k×k only).
    A layer is only rewritten at a rank r (a multiple of `rank_multiple`) where
    r·(K+N) ≤ (1 − margin)·K·N in parameters and MACs.
    Must not fire on: grouped/depthwise Conv, non-constant or non-float weights, Gemm with
    transA, If/Loop/Scan bodies and local functions (their inputs cannot be captured), or a
    model this pass already factorized (idempotence: factor nodes carry a name mark).
    Data-aware by default: with `--calibration` (else the verifier's inputs, with a warning)
    each layer's factors minimise ‖XW − XUV‖ over its real inputs X (activation-whitened SVD),
    then (`refit`) each V (and a Conv's bias) is refitted by least squares, layer by layer in
    graph order, on the inputs the factorized model really feeds it, kept when it brings the
    outputs closer;
    `saving_by=latency` times each layer alone in onnxruntime and allocates a global target
    only to layers whose factors run faster, by milliseconds saved per unit of loss;
    `method=svd` (or no data at all, with a warning) is plain truncated SVD of the weight.
    Lossy: it fits on three calibration samples in four and, before returning, runs the
    factorized model on the fourth and backs off (halving `strength`) until every held-out
    sample's outputs (and slices of outputs, `--budget-slices`) meet its budget (`budget`, else
    `--budget`, else cos=0.99) and, with `never_slower`, the result runs no slower than its
    input (graphopt/speed.py); if no setting does, it leaves the model unchanged. When the
    pipeline's verification still misses, `weaker()` hands it a halved strength.
    """

    name = "factorize"
    lossless = False
    after = ("cleanup", "fuse")

    @dataclasses.dataclass
    class Options:
        method: str = "auto"  # data (activation-whitened SVD) | svd (plain) | auto: data when inputs exist
        rank_by: str = "max_error"  # energy | rank_ratio | max_error | target (global, allocated by sensitivity)
        energy: float = 0.99  # rank_by=energy: fraction of squared singular values (on the data) kept
        rank_ratio: float = 0.5  # rank_by=rank_ratio: rank as a fraction of the full rank
        max_error: float = 0.1  # rank_by=max_error: relative output error allowed per layer
        target: str = "macs=0.25"  # rank_by=target: 'macs=F' or 'params=F', fraction of the model removed
        margin: float = 0.1  # factorize only where factors cost <= (1 - margin) x the original
        rank_multiple: int = 8  # ranks are multiples of this
        conv: str = "auto"  # channel (kxk then 1x1) | input (1x1 then kxk) | auto (per layer, channel or input, whichever fits the data better) | spatial (kx1 then 1xk) | off
        ops: str = "MatMul,Gemm,Conv"  # op types to consider
        max_samples: int = 32  # calibration samples used at most
        rows_per_sample: int = 512  # input rows (tokens, conv positions) per sample fed to each fit
        sensitivity: str = "model"  # rank_by=target: model (each layer's end-to-end effect, one run each) | layer
        sensitivity_samples: int = 8  # samples the per-layer sensitivity runs use
        saving_by: str = "macs"  # rank_by=target: spend the loss where it saves macs, or measured latency (each layer timed in ORT)
        refit: bool = True  # data method: where the factors miss the budget, refit each V (and a Conv's bias) by least squares, layer by layer, on the inputs the factorized model feeds it
        refit_samples: int = 8  # calibration samples the refit runs on (two model runs per layer each)
        backoff: int = 4  # times strength is halved when the budget is missed (or the result runs slower)
        never_slower: bool = True  # time the result against the input (1 thread, onnxruntime) and back off when slower; inputs under 1 ms are not judged
        strength: float = 1.0  # how far rank_by goes, 1 = as asked; the pipeline's back-off (weaker) lowers it
        budget: str = ""  # the pass's own accuracy budget, e.g. 'cos=0.995'

        def __post_init__(self):
            if self.method not in _METHODS:
                raise ValueError(f"method must be one of {', '.join(_METHODS)}, not {self.method!r}")
            if self.rank_by not in _RULES:
                raise ValueError(f"rank_by must be one of {', '.join(_RULES)}, not {self.rank_by!r}")
            if self.saving_by not in ("macs", "latency"):
                raise ValueError(f"saving_by must be macs or latency, not {self.saving_by!r}")
            if self.sensitivity not in ("model", "layer"):
                raise ValueError(f"sensitivity must be model or layer, not {self.sensitivity!r}")
            if self.conv not in _CONV_MODES:
                raise ValueError(f"conv must be one of {', '.join(_CONV_MODES)}, not {self.conv!r}")
            unknown = set(self.op_set()) - set(_OPS)
            if unknown:
                raise ValueError(f"ops must be among {', '.join(_OPS)}; unknown: {', '.join(sorted(unknown))}")
            for name in ("energy", "rank_ratio", "max_error"):
                if not 0.0 < getattr(self, name) <= 1.0:
                    raise ValueError(f"{name} must be in (0, 1]")
            if not 0.0 <= self.margin < 1.0:
                raise ValueError("margin must be in [0, 1)")
            for name in ("rank_multiple", "max_samples", "rows_per_sample", "sensitivity_samples", "refit_samples"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1")
            if self.backoff < 0:
                raise ValueError("backoff must be >= 0")
            if not 0.0 < self.strength <= 1.0:
                raise ValueError("strength must be in (0, 1]")
            parse_target(self.target)
            try:
                Budget.parse(self.budget)
            except graphopt.UsageError as error:
                raise ValueError(str(error)) from error

        def op_set(self) -> set[str]:
            ops = {part.strip() for part in self.ops.split(",") if part.strip()}
            return ops - {"Conv"} if self.conv == "off" else ops

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        options, log = self.options, ctx.logger
        if any(is_factorized(node) for node in graph.nodes):
            log.info("factorize: the model is already factorized; left as it is")
            return graphopt.PassResult(changed=False, stats={"factorized": 0, "already_factorized": True})
        sites, refused = find_sites(graph, options.conv, options.op_set())
        stats: dict = {"factorized": 0, "left_alone": refused}
        if not sites:
            return graphopt.PassResult(changed=False, stats=stats)
        model = ctx.proto()
        given, origin = ctx.fitting_data(options.max_samples)
        # fitted on three samples in four, the strength judged on the fourth (statistics.split_held_out)
        samples, judged = split_held_out(given)
        method = options.method if options.method != "auto" else ("data" if samples else "svd")
        if samples is None:
            log.warning("factorize: no calibration data nor verifier inputs; plain SVD, budget unchecked")
            method = "svd"
        elif origin == "sample_inputs":
            log.warning("factorize: no --calibration; fitting to the verifier's inputs, whose figures may mean little")
        data = None
        if samples:
            count = len(next(iter(samples.values())))
            data = collect(model, samples, sites, options.rows_per_sample, ctx.rng(),
                           track=lambda items: ctx.track(items, desc="factorize: calibration", total=count))
        _set_rows(sites, data)
        if data is not None:
            sites, unfit = _fittable(sites, data)
            if unfit:
                stats["skipped_by_statistics"] = unfit
            if not sites:
                return graphopt.PassResult(changed=False, stats=stats)
        fits = {site.index: fit_site(site, method, data, options.conv, options.rank_multiple) for site in sites}
        totals = _model_totals(model, samples, sites)
        budget = Budget.parse(options.budget) or ctx.budget or _DEFAULT_BUDGET
        weights, timings, candidates = None, None, sites
        timer = graphopt_latency.of(ctx)
        if options.rank_by == "target" and options.saving_by == "latency" and not timer.measures:
            log.info("factorize: saving_by=latency on latency backend 'none': ranks chosen by MACs")
        elif options.rank_by == "target" and options.saving_by == "latency":
            stats["latency_backend"] = timer.name
            timings = self._timings(sites, fits, data, graph.opset, ctx)
            # only layers whose factors run faster are worth a sensitivity probe
            candidates = [site for site in sites if site.index in timings and first_paying_rank(
                site, lambda s, r: timings[s.index].ms(r), options.margin, options.rank_multiple) > 0]
            stats["paying_in_latency"] = len(candidates)
        if options.rank_by == "target" and options.sensitivity == "model" and data is not None:
            probe = {name: array[:options.sensitivity_samples] for name, array in samples.items()}
            reference = {k: v[:options.sensitivity_samples] for k, v in data.outputs.items()}
            weights = measure_sensitivity(
                ctx.track(candidates, desc="factorize: sensitivity", total=len(candidates)), fits,
                lambda chosen: 1.0 - _worst_cosine(_metrics(_factorized_copy(model, options, chosen), probe, reference, ctx.output_slices)),
                options.margin, options.rank_multiple)
        judged_outputs = None if data is None else data.outputs if judged is samples else stacked_outputs(model, judged)
        ranks, factors, strength, measured, refitted = {}, {}, 1.0, None, False
        for attempt in range(options.backoff + 1):
            strength = options.strength * 0.5**attempt
            ranks = self._ranks(candidates, fits, strength, totals, weights, timings)
            factors = {index: fits[index].factors(rank) for index, rank in ranks.items()}
            if not ranks or data is None:
                break
            candidate = _factorized_copy(model, options, factors)
            measured = _metrics(candidate, judged, judged_outputs, ctx.output_slices)
            refitted = False
            if method == "data" and options.refit and _misses(budget, measured):
                # kept only where it helps on the data; a refit fits to the data it is judged on,
                # but refits only V, in order (refit.py says what overfitted and was dropped)
                # each layer's refit runs two models over its samples: a few images give thousands of rows
                few = {name: array[:options.refit_samples] for name, array in samples.items()}
                again = refit_in_order(model, lambda chosen: _factorized_copy(model, options, chosen), few, sites,
                                       factors, options.rows_per_sample, ctx.seed,
                                       track=lambda items: ctx.track(items, desc="factorize: refit", total=len(ranks)),
                                       bias=True)
                remeasured = _metrics(_factorized_copy(model, options, again), judged, judged_outputs, ctx.output_slices)
                if _worst_cosine(remeasured) > _worst_cosine(measured):
                    factors, measured, refitted = again, remeasured, True
            if not _misses(budget, measured):
                slow = slower(model, _factorized_copy(model, options, factors), judged, graphopt_latency.of(ctx)) if options.never_slower else None
                if slow is None:
                    break
                stats.setdefault("slower_than_input", []).append(dict(slow, strength=strength))
                log.info("factorize: strength %.3g runs %.3g× the input's latency; backing off", strength, slow["latency_ratio"])
                ranks = {}
                continue
            log.info("factorize: strength %.3g misses %s (%s); backing off", strength, budget.describe(), _cosines(measured))
            ranks = {}
        if judged is not samples and judged:
            stats["judged_on_held_out"] = len(next(iter(judged.values())))
        stats.update(method=method, data=origin, rank_by=options.rank_by, strength=strength,
                     budget=budget.describe(), sites=len(sites), refitted=refitted)
        if measured and ranks:
            stats["calibration_metrics"] = measured
        if not ranks:
            log.info("factorize: nothing factorized (%d candidate layers)", len(sites))
            return graphopt.PassResult(changed=False, stats=stats)
        stats.update(_apply(graph, sites, fits, factors))
        stats["factorized"] = len(ranks)
        for key, total in totals.items():
            stats[f"model_{key}_before"] = total
        log.info("factorize: %d layers, MACs %s → %s (%s, strength %.3g)", len(ranks), stats["macs_before"],
                 stats["macs_after"], method, strength)
        return graphopt.PassResult(changed=True, stats=stats)

    def weaker(self, verdict, result=None) -> Factorize | None:
        """This pass at half the strength its last run used (the pipeline's back-off); None
        below 1/64 of what was asked, where factorizing would no longer pay for itself."""
        used = (result.stats.get("strength") if result is not None and result.changed else None) or self.options.strength
        if used / 2 < _WEAKEST:
            return None
        return Factorize(dataclasses.replace(self.options, strength=used / 2))

    def _timings(self, sites: list[Site], fits: dict[int, Factorization], data: LayerData | None, opset: int,
                 ctx: graphopt.PassContext) -> dict[int, LayerTiming]:
        """Each layer timed alone on the run's latency backend, as it is and at three ranks it could take."""
        multiple = self.options.rank_multiple
        shapes = dict(data.input_shapes) if data is not None else {}
        for site in sites:
            if site.index not in shapes and tensor_shapes.is_static_shape(site.input.shape):
                shapes[site.index] = tuple(site.input.shape)

        def ranks_of(site: Site) -> list[int]:
            top = site.max_saving_rank(self.options.margin, multiple)
            return [rank for rank in (top, round_rank(top // 2, multiple, top), multiple) if 0 < rank <= top]

        timed = [site for site in sites if site.index in shapes and site.max_saving_rank(self.options.margin, multiple) > 0]
        return time_layers(ctx.track(timed, desc="factorize: timing layers", total=len(timed)), fits, shapes, ranks_of, opset,
                           timer=graphopt_latency.of(ctx))

    def _ranks(self, sites: list[Site], fits: dict[int, Factorization], strength: float, totals: dict,
               weights: dict[int, float] | None, timings: dict[int, LayerTiming] | None) -> dict[int, int]:
        options = self.options
        if options.rank_by == "target":
            metric, fraction = parse_target(options.target)
            return ranks_for_target(sites, fits, metric, fraction * strength, totals[metric], options.margin,
                                    options.rank_multiple, weights, timings)
        value = getattr(options, options.rank_by)
        return ranks_by_rule(sites, fits, options.rank_by, value, strength, options.margin, options.rank_multiple)


def _fittable(sites: list[Site], data: LayerData) -> tuple[list[Site], list[dict]]:
    """(the sites whose input statistics can be fitted to, one `{node, reason}` per site left alone)."""
    kept, unfit = [], []
    for site in sites:
        problem = gram_problem(data.grams.get(site.index), data.rows_seen.get(site.index)) \
            if site.index in data.grams and data.rows_seen.get(site.index) else None
        if problem is None:
            kept.append(site)
        else:
            unfit.append({"node": site.name, "reason": problem})
            logger.info("factorize: '%s' left alone: %s", site.name, problem)
    return kept, unfit


def _set_rows(sites: list[Site], data: LayerData | None) -> None:
    """Output positions per sample, from the captured inputs' shapes, else from static graph shapes."""
    for site in sites:
        shape = data.input_shapes.get(site.index) if data is not None else None
        if shape is None and tensor_shapes.is_static_shape(site.input.shape):
            shape = tuple(site.input.shape)
        if shape is None:
            continue
        if site.kind in ("matmul", "gemm"):
            site.rows = math.prod(shape[:-1])
        elif len(shape) == 4:
            batch, out_h, out_w, in_w = conv_geometry(site, shape)
            site.rows, site.first_rows = batch * out_h * out_w, batch * out_h * in_w
            site.input_pixels = batch * shape[2] * shape[3]


def _model_totals(model: onnx.ModelProto, samples: dict | None, sites: list[Site]) -> dict[str, int]:
    """The whole model's MACs and parameters, shapes fixed to the samples' when the model's are dynamic."""
    static = model
    if samples:
        static = onnx.ModelProto()
        static.CopyFrom(model)
        del static.graph.value_info[:]
        for value in static.graph.input:
            if value.name in samples and value.type.HasField("tensor_type"):
                dims = value.type.tensor_type.shape.dim
                for dim, size in zip(dims, samples[value.name].shape[1:]):
                    dim.Clear()
                    dim.dim_value = int(size)
        static = infer_model_shapes(static)
    summary = summarize(static)
    # The summary counts a MatMul/Conv only where inference found its shapes; the sites' own
    # counts come from the captured activations, so add those it had to leave out.
    known = {value.name for value in list(static.graph.value_info) + list(static.graph.output)
             if value.type.tensor_type.HasField("shape")
             and all(dim.HasField("dim_value") for dim in value.type.tensor_type.shape.dim)}
    missed = sum(site.macs() or 0 for site in sites
                 if not ({site.node.outputs[0].name, site.input.name} <= known | set(samples or ())))
    return {"macs": int(summary["macs"]) + missed, "params": int(summary["parameters"])}


def _factorized_copy(model: onnx.ModelProto, options, factors: dict[int, tuple]) -> onnx.ModelProto:
    graph = convert.import_graph(model)
    sites, _ = find_sites(graph, options.conv, options.op_set())
    _apply(graph, sites, None, factors)
    return convert.export_model(graph, model)


def _metrics(candidate: onnx.ModelProto, samples: dict, reference: dict[str, np.ndarray], slices=()) -> dict[str, dict]:
    """Per output (and slice of one), the candidate's per-sample metrics against `reference`
    (the model's outputs on `samples`)."""
    session = make_session(candidate)
    names = list(reference)
    runs = run_samples(session, split_samples({k: v for k, v in samples.items() if k in _input_names(candidate)}), names)
    return measure_outputs(reference, {name: np.stack([run[name] for run in runs]) for name in names}, slices)


def _input_names(model: onnx.ModelProto) -> set[str]:
    return {value.name for value in model.graph.input}


def _misses(budget: Budget, measured: dict[str, dict]) -> bool:
    return any(budget.violations(name, values) for name, values in measured.items())


def _worst_cosine(measured: dict[str, dict]) -> float:
    return min(values["cosine"] for values in measured.values())


def _cosines(measured: dict[str, dict]) -> str:
    return ", ".join(f"{name}: cos {values['cosine']:.5f}" for name, values in measured.items())


def _apply(graph: gs.Graph, sites: list[Site], fits: dict[int, Factorization] | None, factors: dict[int, tuple]) -> dict:
    """Rewrites the chosen sites with their (U, V); returns the per-layer report and totals.

    A layer's `error` is its own fit's relative output error on its original inputs.
    """
    taken = {node.name for node in graph.nodes} | set(graph.tensors())
    layers = []
    for site in sites:
        if site.index not in factors:
            continue
        first, second, *bias = factors[site.index]  # (U, V) or (U, V, the refitted bias)
        rank = first.shape[1]
        if fits is not None:
            fit = fits[site.index]
            layers.append({
                "node": site.name, "op": site.node.op, "kind": site.kind, "rank": rank, "full_rank": fit.full_rank,
                "params_before": site.params(), "params_after": site.params(rank),
                "macs_before": site.macs(), "macs_after": site.macs(rank),
                "error": round(float(fit.errors[rank]), 6), "error_on": fit.measured_on,
            })
        factorize_site(graph, site, first, second, bias[0] if bias else None, taken=taken)
    graph.nodes = [node for node in graph.nodes if node.inputs or node.outputs]
    graph_queries.toposort(graph)  # linear; graphsurgeon's toposort took seconds at 100k nodes
    known = [layer for layer in layers if layer["macs_before"] is not None]
    return {
        "params_before": sum(layer["params_before"] for layer in layers),
        "params_after": sum(layer["params_after"] for layer in layers),
        "macs_before": sum(layer["macs_before"] for layer in known),
        "macs_after": sum(layer["macs_after"] for layer in known),
        "layers": layers,
    }
