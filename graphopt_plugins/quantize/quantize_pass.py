"""The `quantize` pass: int8 static QDQ / dynamic / weight-only (int8, int4), kept where it pays."""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

import graphopt
from graphopt import latency as graphopt_latency
from graphopt.errors import PreconditionError, UsageError
from graphopt.verify.feeds import generate_feeds
from graphopt.verify.metrics import Budget
from graphopt_plugins.quantize.calibration import METHODS
from graphopt_plugins.quantize.ingredients import ingredient_plans
from graphopt_plugins.quantize.equalization import equalize, equalized_model, middle_ranges
from graphopt_plugins.quantize.mode_choice import candidate_modes, choose_mode, targets_for, trial_row
from graphopt_plugins.quantize.planner import Planner
from graphopt_plugins.quantize.stored_weights import NOTHING_STORED
from graphopt_plugins.quantize.targets import WEIGHT_OPS, is_quantized

__all__ = ["Quantize"]

_DEFAULT_BUDGET = Budget(cos=0.99)  # the pipeline's own default for lossy passes
_SAFETY_STEPS = (0.5, 0.8, 0.95)  # the back-off's aims inside the budget before quantizing nothing


class Quantize(graphopt.Pass):
    """Quantizes Conv/ConvTranspose/Gemm/MatMul weights to int8 per channel (or int4 blocks), activations to 8 bits.

    Modes: `static` inserts QuantizeLinear/DequantizeLinear around each target so that
    onnxruntime fuses QLinearConv / QGemm / QLinearMatMul / MatMulIntegerToFloat: int8
    symmetric weights per output channel (Conv axis 0, ConvTranspose 1, Gemm by transB, MatMul
    the last axis), int32 bias at x_scale*w_scale, activations per tensor (uint8 asymmetric or
    int8 symmetric) from calibration (minmax, percentile, entropy, mse). `dynamic` rewrites
    MatMul/Gemm to DynamicQuantizeLinear + MatMulInteger. `weight-only` stores weights as int8
    per channel or int4 blocks (opset 21) behind a DequantizeLinear. Where this machine's
    int8 GEMM saturates its int16 pair sums (x86 without VNNI; probed), the weights an integer
    kernel multiplies are held to [-63, 63] (`reduce_range`). In every mode, embedding
    tables (Gather from a 2-D float constant) become int8 per row; only the gathered rows are scaled.
    Keeps a layer float when the user excludes it, when it is too harmful for the budget (most
    harmful first, by measured sensitivity), or when int8 is slower there on the latency backend
    (`latency=auto`; `--latency-on`, default host-ort: this machine); if the whole result is
    still slower than float, nothing is changed. With `--latency-on none` nothing is timed.
    A layer kept float still stores its weight int8 per channel when the budget holds and the model
    is not slower for it (`stored_weights.py`): through MatMulNBits (a MatMul/Gemm alone on its
    weight, when that times faster) or as Cast -> Mul, which onnxruntime folds back to the float
    weight at load; an LSTM's W and R and other large float constants are stored the second way.
    A weight read by several layers (an unrolled LSTM) is quantized once, and its readers are
    kept float or int8 together. With `--calibration` alone, ranges are fitted without its last
    quarter, and plans are judged on every sample, so on some the plan did not fit.
    Accuracy options (off by default): `equalize` (cross-layer equalization, `equalization.py`),
    `rounding=adaptive` (weights rounded to fit each layer's output, `weight_rounding.py`),
    `bias_correction`; `weight_granularity=per-tensor` for targets that need one weight scale.
    Does not fire on: a graph that is already quantized (Q/DQ, QLinear*, *Integer ops), weights
    that are not float32 constants, activation x activation MatMuls, nested bodies and functions.
    Needs opset 13 (int4 blocks: 21): the pipeline converts an older model first. Lossy: held to `budget`;
    a plan the pipeline's verification refuses is backed off (`safety` 0.5, 0.8, 0.95, then nothing quantized).
    """

    name = "quantize"
    lossless = False
    after = ("cleanup", "fuse", "factorize", "prune")
    requires_opset = 13  # per-channel DequantizeLinear

    @dataclasses.dataclass
    class Options:
        mode: Literal["auto", "static", "dynamic", "weight-only"] = "auto"  # auto: the fastest of static QDQ and dynamic, timed here
        calibrate: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"  # activation range method
        percentile: float = 99.99  # for calibrate=percentile: the kept percentile of each tensor
        activations: Literal["uint8", "int8"] = "uint8"  # uint8 asymmetric, or int8 symmetric
        reduce_range: Literal["auto", "on", "off"] = "auto"  # int8 weights in [-63, 63]; auto: where this machine's int8 kernel saturates
        weight_bits: int = 8  # weight-only: 8 (per channel) or 4 (blocks along the reduction axis)
        block_size: int = 32  # weight-only int4: elements per block (>= 16, a power of two)
        op_types: list[str] = dataclasses.field(default_factory=lambda: list(WEIGHT_OPS))  # ops to quantize
        include: list[str] = dataclasses.field(default_factory=list)  # node-name globs; empty = all
        exclude: list[str] = dataclasses.field(default_factory=list)  # node-name globs or op types kept float
        budget: str | None = None  # accuracy budget (cos:0.99, sqnr:30); else --budget, else cos=0.99
        embeddings: bool = True  # also store Gather tables (embeddings) as int8 per row, when any layer is quantized
        auto: bool = True  # keep the most harmful layers float until the budget holds
        latency: Literal["auto", "off"] = "auto"  # keep float where int8 is slower on the --latency-on backend (none: never)
        latency_margin: float = 0.95  # a layer stays int8 when its int8 time <= margin x float time
        bias_correction: bool = False  # static: move each layer's mean output error per channel into its bias
        smooth: float = 0.5  # SmoothQuant alpha for MatMuls fed by LayerNorm (outlier channels into the weights); 0 = off
        equalize: bool = False  # cross-layer equalization of Conv -> (Relu) -> Conv pairs first (float outputs unchanged)
        weight_granularity: Literal["per-channel", "per-tensor"] = "per-channel"  # static/dynamic: one weight scale per output channel or per tensor
        rounding: Literal["nearest", "adaptive"] = "nearest"  # static/dynamic: adaptive rounds each weight up or down to fit the layer's output on calibration data
        full_graph: bool = True  # static: also run activation-only ops (SiLU, Add, Concat, Split, MaxPool, Resize...) in 8 bits
        max_samples: int = 32  # calibration samples used at most
        sensitivity_samples: int = 4  # samples per per-layer sensitivity measurement
        safety: float = 0.0  # share of the budget's room the plan leaves unused (the back-off raises it; 1 = quantize nothing)
        search_seconds: float = 20.0  # accuracy fixes (bias correction, adaptive rounding, percentile) are tried, before layers stay float, until the pass has run this long; 0 = never
        workers: int = 0  # sessions run side by side to judge plans and layers (0: one per core, at most 4); the figures do not depend on it

        def __post_init__(self):
            if self.weight_bits not in (4, 8):
                raise ValueError("weight_bits must be 4 or 8")
            if self.block_size < 16 or self.block_size & (self.block_size - 1):
                raise ValueError("block_size must be a power of two >= 16")
            if not 50.0 < self.percentile <= 100.0:
                raise ValueError("percentile must be in (50, 100]")
            if not 0.0 < self.latency_margin <= 1.0:
                raise ValueError("latency_margin must be in (0, 1]")
            if not 0.0 <= self.safety <= 1.0:
                raise ValueError("safety must be in [0, 1]")
            if self.max_samples < 1 or self.sensitivity_samples < 1:
                raise ValueError("max_samples and sensitivity_samples must be >= 1")
            if self.search_seconds < 0:
                raise ValueError("search_seconds must be >= 0 (0: no accuracy fixes are tried)")
            if self.workers < 0:
                raise ValueError("workers must be >= 0 (0: one per core, at most 4)")
            unknown = [op for op in self.op_types if op not in WEIGHT_OPS]
            if unknown:
                raise ValueError(f"op_types: {', '.join(unknown)} not among {', '.join(WEIGHT_OPS)}")
            try:
                Budget.parse(self.budget)
            except UsageError as error:
                raise ValueError(str(error)) from error
            if not 0.0 <= self.smooth < 1.0:
                raise UsageError(f"smooth must be in [0, 1) (0 turns it off), not {self.smooth}")
            if self.calibrate not in METHODS:
                raise UsageError(f"calibrate must be one of {', '.join(METHODS)}, not {self.calibrate!r}")

    def weaker(self, verdict, result=None) -> Quantize | None:
        """This pass aiming further inside its budget (the pipeline's back-off): its plan met the
        budget on the samples it judged but not in the verifier's check (other samples, or layers a
        latency decision dropped afterwards). Gives up half the remaining room each time; the last
        step quantizes nothing, so the model comes back unchanged rather than failed."""
        if result is not None and not result.changed:
            return None
        steps = _SAFETY_STEPS + (1.0,)
        later = [safety for safety in steps if safety > self.options.safety]
        return Quantize(dataclasses.replace(self.options, safety=later[0])) if later else None

    def required_opset(self) -> int:
        int4_blocks = self.options.mode == "weight-only" and self.options.weight_bits == 4
        return 21 if int4_blocks else self.requires_opset

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        options = self.options
        if is_quantized(graph):
            ctx.logger.info("quantize: the graph is already quantized; left alone")
            return graphopt.PassResult(changed=False, stats={"already_quantized": True})
        if ctx.opset and ctx.opset < self.required_opset():  # the pipeline converts first; a direct caller may not
            raise PreconditionError(f"pass 'quantize' needs opset >= {self.required_opset()} (per-channel DequantizeLinear; "
                                    f"int4 blocks: 21); the model has {ctx.opset} (convert it first: --passes opset,...)")
        if options.safety >= 1.0:
            ctx.logger.info("quantize: backed off to quantizing nothing")
            return graphopt.PassResult(changed=False, stats={"quantized": 0, "reason": "backed off: no plan met the budget"})
        latency = graphopt_latency.of(ctx)
        modes = candidate_modes(graph, options, latency.measures) if options.mode == "auto" else [options.mode]
        found = {mode: targets_for(graph, options, mode) for mode in modes}
        found = {mode: pair for mode, pair in found.items() if pair[0]}
        if not found:
            return graphopt.PassResult(changed=False, stats={"quantized": 0, "skipped": targets_for(graph, options, modes[0])[1]})
        calibration, evaluation, origin, held_out = self._data(ctx.proto(), ctx)
        ranges = middle_ranges(ctx.proto(), calibration) if options.equalize and options.weight_granularity == "per-channel" else None
        model, equalized = equalized_model(ctx.proto(), ranges) if options.equalize else (ctx.proto(), 0)
        budget = (Budget.parse(options.budget) or ctx.budget or _DEFAULT_BUDGET).tightened(options.safety)
        plans, untried, layer_times, started = {}, [], {}, time.perf_counter()
        for mode, (targets, skipped) in found.items():
            def plan(planned_options, targets=targets, skipped=skipped, mode=mode):
                planner = Planner(model, targets, planned_options, calibration, evaluation, budget, ctx.seed, latency=latency,
                                  track=lambda items, desc, total: ctx.track(items, desc=desc, total=total),
                                  slices=ctx.output_slices, layer_times=layer_times)
                chosen, stats = planner.plan()
                stats.update(data=origin, held_out_samples=held_out, skipped=skipped, mode=mode, **({"safety": options.safety} if options.safety else {}),
                             **({"equalized_pairs": equalized} if options.equalize else {}))
                return planner, chosen, stats
            plans[mode] = plan(dataclasses.replace(options, mode=mode))
            fixes, not_tried = ingredient_plans(mode, dataclasses.replace(options, mode=mode), plans[mode][2], plan, started, budget)
            plans.update(fixes)
            untried += not_tried
        mode, timings = next(iter(plans)), {}
        useful = {m: p for m, p in plans.items() if p[1] or p[0].stored != NOTHING_STORED}
        if useful:
            mode, timings = choose_mode(model, useful, latency, timed=options.latency == "auto" and latency.measures)
        planner, chosen, stats = plans[mode]
        if options.mode == "auto" or len(plans) > 1 or untried:
            stats.update(mode_requested=options.mode, chosen_plan=mode, mode_trials=[trial_row(m, p[2], timings.get(m)) for m, p in plans.items()] + untried)
        if not chosen and planner.stored == NOTHING_STORED:
            ctx.logger.info("quantize: nothing quantized (%s)", stats.get("reason", "every layer kept float"))
            return graphopt.PassResult(changed=False, stats=stats)
        weight_bytes = _constant_bytes(graph)
        if equalized:
            equalize(graph, ranges)  # the planner's model was equalized the same way: same weights, same indices
        planner.apply(graph, chosen)
        stats.update(weight_bytes_before=weight_bytes, weight_bytes_after=_constant_bytes(graph))
        if stats["weight_bytes_after"] > weight_bytes:  # never larger without saying why
            stats.setdefault("warnings", []).append(
                f"the constants grew from {weight_bytes:,} to {stats['weight_bytes_after']:,} bytes: the scales, zero points "
                f"and int32 biases of {len(chosen)} quantized layers outweigh the bytes their int8 weights save")
        ctx.logger.info("quantize: %d of %d layers quantized (%s), %d more with int8 weights only, cosine %.5f", len(chosen),
                        len(planner.targets), mode, len(planner.stored[0]), stats.get("cosine", float("nan")))
        return graphopt.PassResult(changed=True, stats=stats)

    def _data(self, model: onnx.ModelProto, ctx: graphopt.PassContext):
        limit = self.options.max_samples
        cut = lambda samples: {name: value[:limit] for name, value in samples.items()}  # noqa: E731
        calibration, origin = ctx.fitting_data(limit)
        if origin == "sample_inputs":
            origin = "verifier inputs (generated unless --inputs)"
        elif calibration is None:
            calibration, origin = generate_feeds(model, seed=ctx.seed, samples=8), "generated"
        if origin != "calibration" and self.options.mode in ("static", "auto"):
            ctx.logger.warning("quantize: no --calibration data; calibrating on %s, so ranges and accuracy figures mean little", origin)
        evaluation = ctx.sample_inputs if ctx.sample_inputs is not None else calibration
        calibration, evaluation = cut(calibration), cut(evaluation)
        held_out = 0  # samples judged on but not fitted to, when the judging data is the fitting data
        if self.options.auto and calibration and _same_samples(calibration, evaluation):  # only a judged plan needs it
            calibration, evaluation = _hold_out(calibration, ctx)
            held_out = len(next(iter(evaluation.values()))) - len(next(iter(calibration.values())))
        return calibration, evaluation, origin, held_out


def _same_samples(fitting: dict, judging: dict) -> bool:
    """Whether the samples a plan would be judged on are the ones its ranges are fitted to
    (no `--inputs`: the verifier runs on the `--calibration` data itself)."""
    if fitting.keys() != judging.keys():
        return False
    return all(len(fitting[name]) == len(judging[name]) and np.array_equal(fitting[name], judging[name]) for name in fitting)


def _hold_out(samples: dict, ctx: graphopt.PassContext) -> tuple[dict, dict]:
    """(fitting samples, judging samples): ranges are fitted without the last quarter of the samples,
    so a plan is judged on inputs it did not fit too (a plan fitted and judged on the same inputs
    meets the budget there and misses it on the next ones). The judging set is every sample,
    held-out ones first (the sensitivity sweep measures on the first few), as the verifier that
    runs on the same data judges on all of them."""
    count = len(next(iter(samples.values())))
    held = count // 4
    if held < 1:
        ctx.logger.warning("quantize: %d calibration sample(s): none can be held out, so the plan is judged on the "
                           "samples its ranges were fitted to; give --calibration (or --inputs) with 4 or more samples", count)
        return samples, samples
    fitting = {name: value[: count - held] for name, value in samples.items()}
    judging = {name: np.concatenate([value[count - held:], value[: count - held]]) for name, value in samples.items()}
    return fitting, judging


def _constant_bytes(graph: gs.Graph) -> int:
    """The bytes of the distinct constants the main graph's nodes read (each shared one counted once)."""
    seen, total = set(), 0
    for node in graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
                seen.add(id(tensor))
                try:
                    itemsize = np.dtype(tensor.dtype).itemsize
                except TypeError:  # int4 and other sub-byte types
                    itemsize = 1
                total += int(np.prod(tensor.shape, dtype=np.int64)) * itemsize
    return total
