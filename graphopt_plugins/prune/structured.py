"""Structured channel pruning: rank channels per group, allocate, refit the sinks, shrink.

Importance of a group's channel: `l1`/`l2` — the norm of the roots' output-channel weights (each
root normalized by its mean, so layers of different scale weigh alike); `activation` — the output
energy the sinks draw from the channel on calibration data, `E[x_c^2]·||W_sink[:, c]||^2`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.prune import reconstruct
from graphopt_plugins.prune.allocation import allocate, loss_curve
from graphopt_plugins.prune.groups import Group, Sink, prunable_layer
from graphopt_plugins.prune.refit import SinkRecord, refit_sinks
from graphopt_plugins.prune.shrink import channel_features, shrink_groups
from graphopt_plugins.prune.statistics import Request, collect_grams
from graphopt_plugins.prune.widths import group_multiple, removable

__all__ = ["prune_channels", "group_multiple"]

logger = logging.getLogger(__name__)
_MAX_FEATURES = 4096  # a sink input wider than this is refit without data (Gram too big)


def prune_channels(graph: gs.Graph, groups: list[Group], options, model: onnx.ModelProto | None, samples) -> tuple[int, list[dict]]:
    """Prunes the safe `groups`; returns (constants rewritten, one report row per group)."""
    grams = {}
    if samples is not None and model is not None and options.importance == "activation":
        requests = {_request(sink) for group in groups for sink in group.sinks if _features(sink) <= _MAX_FEATURES}
        grams = collect_grams(model, samples, sorted(requests, key=repr), options.max_rows, track=options.track)
    scores = [_importance(group, options.importance, grams) for group in groups]
    counts = _counts(groups, scores, options)
    plan = []
    for group, score, count in zip(groups, scores, counts):
        removed = np.sort(np.argsort(score, kind="stable")[:count]) if count else np.zeros(0, dtype=np.int64)
        plan.append((group, removed))
    rows = [{"group": group.name, "roots": len(group.roots), "channels": group.size, "kept": group.size - len(removed)} for group, removed in plan]
    for group in groups:
        for sink in group.sinks:
            sink.weight = graph_queries.constant_value(sink.node.inputs[1])  # before shrinking, for the refit's target
    refit = options.reconstruct_enabled and samples is not None and model is not None
    errors = {} if refit else _plain_errors(plan, grams)
    deleted = shrink_groups(graph, plan)
    if refit and deleted:
        errors = _refit_sinks(graph, plan, deleted, model, samples, options)
    for row, (group, _) in zip(rows, plan):
        row.update({key: round(value, 6) for key, value in errors.get(id(group), {}).items()})
    return len(deleted), rows


def _counts(groups: list[Group], scores: list[np.ndarray], options) -> list[int]:
    multiple = max(1, options.channel_multiple)
    def fit(size: int, count: int) -> int:
        return removable(size, count, options.channel_multiple, options.min_channels)
    if options.allocation == "uniform" or not groups:
        return [fit(group.size, int(np.floor(options.ratio * group.size))) for group in groups]
    if options.allocation == "latency":
        return [fit(group.size, count) for group, count in zip(groups, _latency_counts(groups, scores, options, multiple))]
    target = int(np.floor(options.ratio * sum(group.size for group in groups)))
    counts = allocate([loss_curve(score) for score in scores], target, cap=options.max_ratio)
    return [fit(group.size, count) for group, count in zip(groups, counts)]


def _latency_counts(groups: list[Group], scores: list[np.ndarray], options, multiple: int) -> list[int]:
    """Counts removing `ratio` of the groups' MACs at least measured loss per MAC (see latency_allocation)."""
    costs = getattr(options, "group_costs", None) or {}
    curves, weights, gains = [], [], []
    for group, score in zip(groups, scores):
        curve = loss_curve(score)
        cost = costs.get(group.name)
        usable = cost is not None and cost.probe > 0 and curve[cost.probe] > 0
        curves.append(curve)
        # the measured loss at the probe, spread along the group's importance curve
        weights.append(cost.loss / curve[cost.probe] if usable else 0.0)
        gains.append(cost.gain if usable else 0.0)  # unmeasured groups are left whole
    target = options.ratio * sum(gain * group.size for gain, group in zip(gains, groups))
    return allocate(curves, target, cap=options.max_ratio, weights=weights, gains=gains, multiple=multiple)


def _importance(group: Group, kind: str, grams: dict) -> np.ndarray:
    if kind == "activation":
        score = np.zeros(group.size)
        used = 0
        for sink in group.sinks:
            gram = grams.get(_request(sink))
            if gram is None:
                continue
            weight, in_axis = _sink_weight(sink)
            rows = reconstruct.as_rows(weight, in_axis)
            features = channel_features(np.arange(group.size), sink.slot.offset, sink.slot.block).reshape(group.size, -1)
            energy = np.diag(gram)[:-1] / max(gram[-1, -1], 1.0) * (rows.astype(np.float64) ** 2).sum(axis=0)
            total = float(energy.sum()) or 1.0
            score += energy[features].sum(axis=1) / total
            used += 1
        if used:
            return score
        kind = "l2"  # no sink with data: fall back to the weights
    score = np.zeros(group.size)
    for root, offset in group.roots:
        index, axis = prunable_layer(root)
        weight = np.moveaxis(graph_queries.constant_value(root.inputs[index]), axis, 0)
        weight = weight[offset : offset + group.size].reshape(group.size, -1).astype(np.float64)
        norms = np.abs(weight).sum(axis=1) if kind == "l1" else np.sqrt((weight**2).sum(axis=1))
        score += norms / (norms.mean() or 1.0)
    return score


def _sink_weight(sink: Sink) -> tuple[np.ndarray, int]:
    node = sink.node
    weight = graph_queries.constant_value(node.inputs[1])
    if node.op == "Conv":
        return weight, 1
    if node.op == "ConvTranspose":
        return weight, 0
    return weight, 1 if node.attrs.get("transB", 0) else 0


def _request(sink: Sink) -> Request:
    return Request(sink.slot.tensor.name, axis=sink.slot.axis)


def _features(sink: Sink) -> int:
    shape = sink.slot.tensor.shape
    return int(shape[sink.slot.axis]) if shape is not None and isinstance(shape[sink.slot.axis], (int, np.integer)) else 1 << 30


def _sink_removals(plan) -> dict[int, tuple[Sink, set[int], list[int]]]:
    per_sink: dict[int, tuple[Sink, set[int], list[int]]] = {}
    for group, removed in plan:
        if not len(removed):
            continue
        for sink in group.sinks:
            entry = per_sink.setdefault(id(sink.node), (sink, set(), []))
            entry[1].update(channel_features(removed, sink.slot.offset, sink.slot.block).tolist())
            entry[2].append(id(group))
    return per_sink


def _plain_errors(plan, grams: dict) -> dict[int, dict]:
    """Without refit, the sinks' relative output loss on calibration data (when there is data)."""
    found: dict[int, dict] = {}
    for sink, removed, owners in _sink_removals(plan).values():
        gram = grams.get(_request(sink))
        if gram is None:
            continue
        weight, in_axis = _sink_weight(sink)
        kept, gone = _split(len(gram) - 1, removed)
        plain, _ = reconstruct.regression_errors(gram, reconstruct.as_rows(weight, in_axis), kept, gone, None)
        for owner in owners:
            found.setdefault(owner, {"sink_error": 0.0})["sink_error"] += plain
    return found


def _refit_sinks(graph: gs.Graph, plan, deleted: dict, model: onnx.ModelProto, samples, options) -> dict[int, dict]:
    """Refits each sink that lost inputs to the unpruned model's output (see `refit`)."""
    records, owners = [], []
    for sink, _, groups in _sink_removals(plan).values():
        node = sink.node
        weight, in_axis = _sink_weight(sink)  # already shrunk: only its shape is used here
        original = sink.weight
        for axis, positions in deleted.get((id(node), 1), {}).items():
            if axis != in_axis:
                original = np.delete(original, sorted(positions), axis=axis)
        bias = graph_queries.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        records.append(SinkRecord(node, sink.slot.tensor.name, sink.slot.axis, in_axis, original, bias))
        owners.append(groups)
    refit_sinks(graph, model, records, samples, options.max_rows, options.damp, options.refit_rounds, track=options.track,
                tune_damp=options.tune_damp, cache=getattr(options, "original_rows", None))
    found: dict[int, dict] = {}
    for record, groups in zip(records, owners):
        for owner in groups:
            entry = found.setdefault(owner, {"sink_error": 0.0, "sink_error_refit": 0.0})
            entry["sink_error"] += record.errors[0]
            entry["sink_error_refit"] += min(record.errors)
    return found


def _split(features: int, removed: set[int]) -> tuple[np.ndarray, np.ndarray]:
    gone = np.array(sorted(removed), dtype=np.int64)
    kept = np.setdiff1d(np.arange(features), gone)
    return kept, gone
