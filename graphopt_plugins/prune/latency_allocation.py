"""`allocation=latency`: prune where the compute is, spare the groups the output is sensitive to.

Each group gets a *gain* — the multiply-accumulates one of its channels costs: its share of its
roots' outputs, of its sinks' inputs and of its depthwise convs, from the layer shapes on one
real sample (detection models have dynamic spatial sizes) — and a *measured loss*: 1 − the
worst output cosine on the fitting data when that group alone loses half its channels
(rounded to `channel_multiple`), ranked as the pass ranks them, without refit. The allocator
then removes channels in order of loss per MAC saved until `ratio` of the MACs the groups
carry is gone, each group's loss growing along its importance curve. On PP-OCRv4 det the two
3×3 convs at 1/4 resolution take ~half the MACs, which uniform ratios barely touch.

When the run's latency backend measures (`--latency-on`: host-ort, host-litert, a device
plugin), the gain is timed there instead (`measured_costs`): the model against the same
probe-pruned copy the loss is measured on, one `compare` per group (purpose `"prune: group"`),
and the gain is the milliseconds saved per channel removed; a group whose channels save nothing
on that target gets no gain and is left whole. `ratio` is then a share of the time the groups
save. With backend `none` nothing is timed and the MACs are the gain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import convert, graph_queries
from graphopt.activations import capture_activations
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import stacked_outputs
from graphopt_plugins.prune.groups import Group, prunable_layer

__all__ = ["GroupCost", "group_gains", "group_losses", "measured_costs", "probe_count"]


@dataclasses.dataclass
class GroupCost:
    gain: float  # MACs saved per channel removed
    loss: float  # measured 1 - worst cosine with `probe` channels removed
    probe: int  # channels removed when the loss was measured


def probe_count(size: int, multiple: int, min_channels: int) -> int:
    count = min(size // 2, size - min_channels)
    return max(0, count - count % multiple)


def group_gains(groups: list[Group], model: onnx.ModelProto, samples: dict[str, np.ndarray]) -> dict[str, float]:
    """`{group name: MACs per channel}` from the layer shapes on the first sample."""
    layers = {id(node): node for group in groups for node in [root for root, _ in group.roots] + [s.node for s in group.sinks] + group.depthwise}
    names = sorted({t.name for node in layers.values() for t in (node.inputs[0], node.outputs[0])})
    first = {name: value[:1] for name, value in samples.items()}
    shapes = {name: value.shape[1:] for name, value in capture_activations(model, first, names).items()}
    macs = {key: _macs(node, shapes) for key, node in layers.items()}
    gains = {}
    for group in groups:
        gain = 0.0
        for root, _ in group.roots:
            index, axis = prunable_layer(root)
            gain += macs[id(root)] / graph_queries.constant_value(root.inputs[index]).shape[axis]
        for sink in group.sinks:
            gain += macs[id(sink.node)] * sink.slot.block / _in_features(sink.node)
        for node in group.depthwise:
            gain += macs[id(node)] / graph_queries.constant_value(node.inputs[1]).shape[0]
        gains[group.name] = gain
    return gains


def _macs(node: gs.Node, shapes: dict[str, tuple]) -> float:
    weight = graph_queries.constant_value(node.inputs[1])
    if node.op == "ConvTranspose":
        return float(np.prod(shapes[node.inputs[0].name]) * np.prod(weight.shape[1:]))
    if node.op == "Conv":
        return float(np.prod(shapes[node.outputs[0].name]) * np.prod(weight.shape[1:]))
    return float(np.prod(shapes[node.outputs[0].name]) * _in_features(node))


def _in_features(node: gs.Node) -> int:
    weight = graph_queries.constant_value(node.inputs[1])
    if node.op == "Conv":
        return weight.shape[1] * node.attrs.get("group", 1)
    if node.op == "ConvTranspose":
        return weight.shape[0]
    return weight.shape[1] if node.attrs.get("transB", 0) else weight.shape[0]


def group_losses(model: onnx.ModelProto, samples: dict[str, np.ndarray], names: list[str],
                 prune_one: Callable[[gs.Graph, str], bool], track) -> dict[str, float]:
    """`{group name: 1 - worst output cosine}` with that group alone pruned by `prune_one(copy, name)`."""
    return {name: loss for name, (loss, _) in _probe(model, samples, names, prune_one, track, None).items()}


def measured_costs(model: onnx.ModelProto, samples: dict[str, np.ndarray], names: list[str], prune_one: Callable[[gs.Graph, str], bool],
                   track, gains: dict[str, float], probes: dict[str, int], timer) -> dict[str, GroupCost]:
    """A `GroupCost` per group `prune_one` prunes: the loss measured, and as gain the milliseconds
    per channel the probe saves on `timer` (a `graphopt.latency` backend), or `gains` (MACs per
    channel) when the backend times nothing."""
    costs = {}
    for name, (loss, saved_ms) in _probe(model, samples, names, prune_one, track, timer if timer.measures else None).items():
        gain = gains[name] if saved_ms is None else max(0.0, saved_ms) / probes[name]
        costs[name] = GroupCost(gain, loss, probes[name])
    return costs


def _probe(model, samples, names, prune_one, track, timer) -> dict[str, tuple[float, float | None]]:
    """`{group: (loss, ms saved on timer or None)}` with that group alone pruned."""
    reference = stacked_outputs(model, samples)
    first = {key: value[0] for key, value in samples.items()}
    found = {}
    for name in track(names, desc="prune: group sensitivity", total=len(names)):
        graph = convert.import_graph(model)
        if not prune_one(graph, name):
            continue
        pruned = convert.export_model(graph, model)
        outputs = stacked_outputs(pruned, samples)
        worst = min(output_metrics(expected, outputs[key])["cosine"] for key, expected in reference.items() if expected.dtype.kind == "f")
        saved = None
        if timer is not None:
            timing = timer.compare({"whole": model, "pruned": pruned}, first, seconds=0.2, rounds=3, purpose="prune: group")
            saved = timing["whole"]["median_ms"] - timing["pruned"]["median_ms"]
        found[name] = (max(0.0, 1.0 - worst), saved)
    return found
