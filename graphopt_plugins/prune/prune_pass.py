"""The `prune` pass: unstructured / n:m weight pruning, or structured channel pruning."""

from __future__ import annotations

import dataclasses
import logging
import re
import types
from typing import Literal

import onnx_graphsurgeon as gs

import graphopt
from graphopt import convert, graph_queries, latency
from graphopt.passes import keep_unless
from graphopt.speed import slower
from graphopt.statistics import split_held_out
from graphopt.verify.metrics import Budget
from graphopt_plugins.prune.backoff import adopt_graph, search_strength
from graphopt_plugins.prune.groups import find_groups, prunable_layer
from graphopt_plugins.prune.latency_allocation import GroupCost, group_gains, measured_costs, probe_count
from graphopt_plugins.prune.shrink import is_pruned_weight
from graphopt_plugins.prune.statistics import calibration_samples
from graphopt_plugins.prune.structured import group_multiple, prune_channels
from graphopt_plugins.prune.unstructured import find_layers, prune_weights

__all__ = ["Prune"]

logger = logging.getLogger(__name__)
# Timed down to 0.01 ms, not the core's 1 ms: a small model (a 0.04 ms CNN) came back from a
# lossy pass 1.7x slower under that floor; 5 interleaved rounds of 1 s hold its median.
TIMING_FLOOR_MS = 0.01
_DEFAULT_BUDGET = Budget(cos=0.99)
_LEAST_AMOUNT = 0.01


class Prune(graphopt.Pass):
    """Prunes weights (magnitude, n:m) or whole channels (dependency groups), with reconstruction.

    `structured=none` zeroes the least important weights of Conv/Gemm/MatMul layers with
    constant weights: per layer, by one global magnitude threshold, or by measured sensitivity;
    `pattern=n:m` keeps n nonzeros in each m along the reduction axis. Zeros alone make no dense
    kernel faster; the report gives dense, stored and zip-compressed bytes. `storage=sparse`
    writes a pruned weight as a Constant with a COO `sparse_value` where that is smaller than
    dense (int64 indices: above 2/3 zeros for float32); onnxruntime densifies it at load, so
    this shrinks the file, not memory or latency.

    `structured=channels` removes output channels of Conv/ConvTranspose/Gemm/MatMul and
    everything that depends on them (BN and per-channel constants, activations, depthwise
    convs, Concat offsets, residual Add/Mul groups, Flatten/Reshape into a Gemm/MatMul, pooling,
    Resize); tensors physically shrink. A group that reaches a graph output, a channel-mixing
    Reshape, a Gather, a Split, a Softmax over channels, a subgraph or an unknown op is skipped
    and reported with its reason.

    With calibration data (`reconstruct`, default when `--calibration` is given) the remaining
    weights are refit layer by layer to the unpruned layer's output on the calibration
    activations: SparseGPT for weights, least squares of the next layer for channels.
    Weights live in initializers or Constant nodes; nested graphs are left alone. Lossy: held
    to `budget`, else `--budget`, else cos=0.99. Before returning, the pass measures its result
    on the fitting data and, when it misses the budget, bisects the amount (sparsity, ratio, or
    for n:m the share of layers given the pattern, least harmful first) for `backoff` tries,
    keeping the largest that holds; if none does, the model is left unchanged, as it is when
    (`never_slower`, channels) the result is not measurably faster than its input (graphopt/speed.py). Layers this
    pass already pruned (`*.sparse`, `*.pruned-out` weights) are left alone, so a second run
    changes nothing.
    """

    name = "prune"
    lossless = False
    after = ("cleanup", "fuse")

    @dataclasses.dataclass
    class Options:
        structured: Literal["none", "channels"] = "none"  # none: zero weights; channels: remove output channels
        sparsity: float = 0.5  # unstructured: share of weights zeroed (per layer, or overall with allocation)
        pattern: str = ""  # unstructured n:m, e.g. 2:4: at most n nonzeros in every m along the reduction axis
        ratio: float = 0.25  # structured: share of channels removed (per group, or overall with allocation)
        importance: Literal["l1", "l2", "activation"] = "l2"  # channel ranking: weight norm, or calibrated output energy
        allocation: Literal["uniform", "global", "sensitivity", "latency"] = "uniform"  # per-layer amounts: equal, one threshold, least estimated loss, least measured loss per MAC, or per ms saved on the latency backend (channels; ratio is then a share of those)
        reconstruct: Literal["auto", "true", "false"] = "auto"  # refit remaining weights on calibration data (auto: with --calibration)
        max_ratio: float = 0.9  # allocation never removes more than this share of one layer or group
        min_channels: int = 1  # a group keeps at least this many channels
        channel_multiple: int = 0  # channels are removed in multiples of this; 0 (auto): a group keeps whole blocks of onnxruntime's blocked convolutions (16 channels with AVX-512, else 8; one block wide: left whole; off the grid: any width), see prune/widths.py
        min_weights: int = 0  # unstructured: layers with fewer weights stay dense
        refit_rounds: int = 8  # structured refit: at most this many sequential rounds (one pruned-model run over the samples each; the unpruned model's rows are cached); deeper models merge consecutive levels
        damp: float = 0.01  # ridge added to Gram/Hessian diagonals, relative to their mean
        tune_damp: bool = True  # structured refit: each sink's ridge by two-fold cross-validation over the samples (else damp)
        samples: int = 24  # calibration samples used at most (three in four fitted, the fourth judges the strength)
        sensitivity_samples: int = 8  # allocation=latency: samples each group's loss is measured on
        max_rows: int = 2048  # activation rows kept per sample for statistics
        storage: Literal["dense", "sparse"] = "dense"  # unstructured: sparse writes a pruned weight as Constant(sparse_value) where that is smaller (above ~2/3 zeros)
        budget: str = ""  # this pass's accuracy budget, e.g. cos=0.98 (default: --budget, else cos=0.99)
        backoff: int = 3  # further tries on the amount when the budget is missed, each aimed by the last one's loss (-1: no budget check)
        never_slower: bool = True  # time the result against the input on the latency backend; leave the model unchanged unless it is measurably faster (median ratio <= 1.0 less the input's own noise; channels only: zeroed weights run the same kernels; inputs under 0.01 ms are not judged)

        def __post_init__(self):
            if not 0.0 <= self.sparsity < 1.0:
                raise ValueError("sparsity must be in [0, 1)")
            if not 0.0 <= self.ratio < 1.0:
                raise ValueError("ratio must be in [0, 1)")
            if not 0.0 < self.max_ratio < 1.0:
                raise ValueError("max_ratio must be in (0, 1)")
            if self.pattern and not re.fullmatch(r"\d+:\d+", self.pattern):
                raise ValueError("pattern must be n:m, e.g. 2:4")
            if self.pattern:
                n, m = map(int, self.pattern.split(":"))
                if not 0 < n < m:
                    raise ValueError("pattern n:m needs 0 < n < m")
            if self.structured == "channels" and self.allocation == "global":
                raise ValueError("allocation=global is for unstructured pruning; use sensitivity for channels")
            if self.allocation == "latency" and self.structured != "channels":
                raise ValueError("allocation=latency is for structured=channels")
            if self.structured == "channels" and self.storage == "sparse":
                raise ValueError("storage=sparse applies to unstructured pruning only (channels shrink tensors instead)")
            if self.structured == "channels" and self.pattern:
                raise ValueError("pattern applies to unstructured pruning only")
            if self.sensitivity_samples < 1 or self.refit_rounds < 1:
                raise ValueError("sensitivity_samples and refit_rounds must be >= 1")
            if self.min_channels < 1 or self.channel_multiple < 0 or self.samples < 1 or self.max_rows < 1 or self.min_weights < 0:
                raise ValueError("min_channels, samples and max_rows must be >= 1, channel_multiple and min_weights >= 0")
            if self.backoff < -1:
                raise ValueError("backoff must be >= -1")
            if self.damp < 0:
                raise ValueError("damp must be >= 0")
            Budget.parse(self.budget)  # a malformed budget is a usage error now, not after the work

    def weaker(self, verdict, result=None) -> Prune | None:
        """This pass removing half of what its last run removed (the pipeline's back-off);
        None for an n:m pattern (its amount is fixed) or below 1% of channels or weights."""
        options = self.options
        if options.pattern:
            return None
        used = (result.stats.get("strength") if result is not None and result.changed else None) or 1.0
        field = "ratio" if options.structured == "channels" else "sparsity"
        amount = getattr(options, field) * used / 2
        if amount < _LEAST_AMOUNT:
            return None
        return Prune(dataclasses.replace(options, **{field: amount}))

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        options = self.options
        settings = types.SimpleNamespace(**dataclasses.asdict(options))
        settings.pattern_nm = tuple(map(int, options.pattern.split(":"))) if options.pattern else (0, 0)
        settings.pattern_share = 1.0
        settings.reconstruct_enabled = options.reconstruct == "true" or (options.reconstruct == "auto" and ctx.calibration is not None)
        settings.track = ctx.track
        settings.original_rows = {}  # the unpruned model's rows, shared by every strength tried (refit.py)
        wants_data = settings.reconstruct_enabled or options.importance == "activation" or options.allocation in ("sensitivity", "latency")
        checks_budget = options.backoff >= 0 and not self._nothing_asked(settings)
        samples = calibration_samples(ctx, options.samples, logger) if wants_data or checks_budget else None
        if settings.reconstruct_enabled and samples is None:
            logger.warning("prune: reconstruction needs data (--calibration or verification inputs); pruning without it")
            settings.reconstruct_enabled = False
        model = ctx.proto()
        if options.allocation == "latency" and samples is None:
            logger.warning("prune: allocation=latency measures each group's loss and needs data; nothing pruned")
        elif options.allocation == "latency" and not self._nothing_asked(settings):
            settings.group_costs = self._group_costs(graph, settings, model, samples, ctx)
        if checks_budget and samples is None:
            logger.warning("prune: no calibration data nor verifier inputs; budget unchecked")
        if checks_budget and samples is not None:
            stats = self._within_budget(graph, settings, model, samples, ctx)
        else:
            stats = self._prune(graph, settings, model, samples)
        stats["reconstructed"] = stats.get("reconstructed", settings.reconstruct_enabled) and stats["changed"]
        changed = stats.pop("changed")
        if changed:
            graph_queries.remove_dead_nodes(graph)  # the Constant nodes and initializers replaced
            graph_queries.toposort(graph)
        ctx.logger.info("prune: %s", {k: v for k, v in stats.items() if not isinstance(v, list)})
        return graphopt.PassResult(changed=changed, stats=stats)

    def trades_for_speed(self) -> bool:
        # zeroed weights (structured=none) run the same dense kernels: the speed is unchanged by construction
        return self.options.structured == "channels" and self.options.never_slower

    @staticmethod
    def _nothing_asked(settings) -> bool:
        if settings.structured == "channels":
            return settings.ratio == 0
        return settings.sparsity == 0 and not settings.pattern

    def _prune(self, graph: gs.Graph, settings, model, samples) -> dict:
        if settings.structured == "channels":
            return self._channels(graph, settings, model, samples)
        return self._weights(graph, settings, model, samples)

    def _within_budget(self, graph: gs.Graph, settings, model, samples, ctx) -> dict:
        """Prunes at the largest strength (share of the requested amount) that meets the budget."""
        budget = Budget.parse(self.options.budget) or ctx.budget or _DEFAULT_BUDGET

        def prune_copy(strength: float, refit: bool = settings.reconstruct_enabled):
            copy = convert.import_graph(model)
            scaled = types.SimpleNamespace(**vars(settings))
            scaled.sparsity, scaled.ratio = settings.sparsity * strength, settings.ratio * strength
            scaled.pattern_share = strength
            scaled.reconstruct_enabled = refit
            return copy, dict(self._prune(copy, scaled, model, fitted), reconstructed=refit)

        # fitted on three samples in four, the strength judged on the fourth (statistics.split_held_out)
        fitted, judged = split_held_out(samples)
        search = lambda make, steps, start=1.0, floor=0.0: search_strength(  # noqa: E731
            make, model, judged, budget, steps, track=lambda items: ctx.track(items, desc="prune: budget search"),
            slices=ctx.output_slices, start=start, floor=floor)
        if settings.structured == "channels" and settings.reconstruct_enabled:
            best, tried = self._search_then_refit(search, prune_copy)
        else:
            best, tried = search(prune_copy, self.options.backoff)
        for attempt in tried[1:] if tried else ():
            logger.info("prune: strength %.3g %s", attempt.strength, "within budget" if not attempt.violations else "misses " + budget.describe())
        if best is None and tried and tried[0].stats.get("changed"):
            logger.info("prune: no strength meets %s; model left unchanged", budget.describe())
        slow = None
        if best is not None and self.trades_for_speed():
            slow = slower(model, convert.export_model(best.graph, model), judged, latency.of(ctx), floor_ms=TIMING_FLOOR_MS)
            if slow is not None:
                logger.info("prune: kept the input: the pruned model timed %.3g× its latency (median of %d timings)",
                            slow["latency_ratio"], slow["timings"])
        if best is None or slow is not None:
            nothing = {"groups_pruned": 0, "channels_removed": 0} if settings.structured == "channels" else {"layers_pruned": 0}
            stats = dict(nothing, changed=False, strength=0.0, **({"slower_than_input": slow} if slow else {}))
        else:
            adopt_graph(graph, best.graph)
            stats = dict(best.stats, strength=round(best.strength, 4), calibration_metrics=best.metrics)
            if judged is not fitted:
                stats["judged_on_held_out"] = len(next(iter(judged.values())))
            if settings.structured == "channels":
                stats["ratio"] = round(settings.ratio * best.strength, 4)
            elif settings.pattern:
                stats["pattern_share"] = round(best.strength, 4)
            else:
                stats["sparsity"] = round(settings.sparsity * best.strength, 4)
        stats.update(budget=budget.describe(), attempts=[attempt.summary() for attempt in tried])
        return stats

    def _search_then_refit(self, search, prune_copy):
        """Channels: the strength searched without the refit (one held-out run a try), then the
        refit — the pass's whole cost, a pruned-model run per level — tried twice at most: at the
        weakest strength that missed without it (where its gain most likely carries the result
        within budget), then where that try's loss says the budget is met."""
        plain, tried = search(lambda strength: prune_copy(strength, refit=False), self.options.backoff)
        found = plain.strength if plain is not None else 0.0
        misses = [attempt.strength for attempt in tried if attempt.violations and attempt.strength > found]
        if found < 1.0 and not misses:
            return plain, tried  # nothing pruned at any strength tried
        start = min(misses, default=1.0)
        refitted, more = search(prune_copy, 1 if start > found else 0, start=start, floor=found)
        tried += more
        if refitted is not None and (plain is None or refitted.strength >= plain.strength):
            return refitted, tried
        return plain, tried

    def _group_costs(self, graph: gs.Graph, settings, model, samples, ctx) -> dict[str, GroupCost]:
        """Per safe group: MACs per channel, and the loss measured with it alone half pruned."""
        safe = _safe_groups(find_groups(graph))[0]
        if not safe:
            return {}
        gains = group_gains(safe, model, samples)
        probe_samples = {name: value[: self.options.sensitivity_samples] for name, value in samples.items()}
        probes = {g.name: probe_count(g.size, group_multiple(g.size, settings.channel_multiple), settings.min_channels) for g in safe}

        def prune_one(copy: gs.Graph, name: str) -> bool:
            group = next((g for g in _safe_groups(find_groups(copy))[0] if g.name == name), None)
            if group is None or not probes[name]:
                return False
            probe = types.SimpleNamespace(**vars(settings))
            probe.allocation, probe.reconstruct_enabled, probe.ratio = "uniform", False, (probes[name] + 0.5) / group.size
            prune_channels(copy, [group], probe, model, probe_samples)
            return True

        return measured_costs(model, probe_samples, [g.name for g in safe if probes[g.name]], prune_one, ctx.track,
                              gains, probes, latency.of(ctx))

    def _channels(self, graph: gs.Graph, settings, model, samples) -> dict:
        if settings.ratio == 0:
            return {"changed": False, "groups": 0}
        groups = find_groups(graph)
        safe, skipped = _safe_groups(groups)
        rewritten, table = prune_channels(graph, safe, settings, model, samples) if safe else (0, [])
        removed = sum(row["channels"] - row["kept"] for row in table)
        return {
            "changed": rewritten > 0,
            "groups": len(groups),
            "groups_pruned": sum(1 for row in table if row["kept"] < row["channels"]),
            "groups_skipped": len(skipped),
            "allocation": settings.allocation,
            "channels_removed": removed,
            "channels_total": sum(row["channels"] for row in table),
            "skipped": skipped,
            "layers": table,
        }

    def _weights(self, graph: gs.Graph, settings, model, samples) -> dict:
        if settings.sparsity == 0 and not settings.pattern:
            return {"changed": False, "layers_pruned": 0}
        layers = find_layers(graph, settings.min_weights)
        table = prune_weights(graph, layers, settings, model, samples)
        zeroed = sum(int(round(row["sparsity"] * row["weights"])) for row in table)
        stats = {
            "changed": bool(table),
            "layers_pruned": len(table),
            "weights_zeroed": zeroed,
            "weights_in_pruned_layers": sum(row["weights"] for row in table),
            "dense_bytes": sum(row["dense_bytes"] for row in table),
            "stored_bytes": sum(row["stored_bytes"] for row in table),
            "layers_stored_sparse": sum(1 for row in table if row["stored_bytes"] < row["dense_bytes"]),
            "zip_bytes_before": sum(row["zip_bytes_before"] for row in table),
            "zip_bytes_after": sum(row["zip_bytes_after"] for row in table),
            "layers": table,
        }
        return stats


def _safe_groups(groups: list) -> tuple[list, list[dict]]:
    """(groups that can be pruned, one `{group, reason}` per group that cannot)."""
    def reason_against(group) -> str | None:
        if group.reason is None and any(is_pruned_weight(root.inputs[prunable_layer(root)[0]]) for root, _ in group.roots):
            return "already pruned"
        return group.reason

    safe, skipped = keep_unless(groups, reason_against)
    for group, reason in skipped:
        logger.debug("prune: group of '%s' skipped: %s", group.name, reason)
    return safe, [{"group": group.name, "reason": reason} for group, reason in skipped]
