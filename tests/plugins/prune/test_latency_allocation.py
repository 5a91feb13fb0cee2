"""`allocation=latency` (graphopt_plugins/prune/latency_allocation.py): MACs per channel from real shapes,
and channels taken where the measured loss per MAC is least, not where the MACs alone are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphopt
from graphopt import convert
from graphopt_plugins.prune.allocation import allocate, loss_curve
from graphopt_plugins.prune.groups import find_groups
from graphopt_plugins.prune.latency_allocation import group_gains
from prune_support import assert_close, build, feeds_for

_DEAD = list(range(8))  # channels of conv b that nothing reads


def _cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(21)
    w_b = rng.normal(0, 0.5, (16, 16, 3, 3)).astype(np.float32)
    w_b[_DEAD] *= 1e-3  # tiny, so the l2 ranking picks them
    w_c = rng.normal(0, 0.5, (16, 16, 3, 3)).astype(np.float32)
    w_c[:, _DEAD] = 0.0
    conv = lambda name, x, w, y, stride: helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1], strides=[stride, stride])
    nodes = [conv("a", "x", "wa", "ya", 1), helper.make_node("Relu", ["ya"], ["ra"]),
             conv("b", "ra", "wb", "yb", 2), helper.make_node("Relu", ["yb"], ["rb"]),
             conv("c", "rb", "wc", "yc", 2), helper.make_node("Relu", ["yc"], ["rc"]),
             helper.make_node("GlobalAveragePool", ["rc"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wd"], ["y"], name="d")]
    weights = {"wa": rng.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32), "wb": w_b, "wc": w_c,
               "wd": rng.normal(0, 0.5, (16, 4)).astype(np.float32)}
    return build(nodes, {"x": [1, 3, 32, 32]}, ["y"], weights)


def test_gains_are_macs_per_channel_from_real_shapes():
    model = _cnn()
    groups = {g.name: g for g in find_groups(convert.import_graph(model))}
    gains = group_gains(list(groups.values()), model, feeds_for(model, 2))
    # a: its own 32x32 output (27 MACs each) + conv b's input share (16x16 positions, 16 outputs, 9 taps)
    assert gains["a"] == 32 * 32 * 27 + 16 * 16 * 16 * 9
    assert gains["b"] == 16 * 16 * 16 * 9 + 8 * 8 * 16 * 9
    assert gains["c"] == 8 * 8 * 16 * 9 + 4


def test_allocator_spends_a_compute_target_where_each_element_saves_most():
    curve = loss_curve(np.ones(10))
    assert allocate([curve, curve], target=40, gains=[1.0, 10.0], step=0.1) == [0, 4]
    rising = loss_curve(np.arange(1.0, 11.0))  # each further element costs more: two units share the target
    assert allocate([rising, rising], target=8, step=0.1, multiple=4) == [4, 4]


def test_latency_allocation_takes_the_free_channels_not_the_biggest_layer():
    model = _cnn()
    groups = find_groups(convert.import_graph(model))
    gains = group_gains(groups, model, feeds_for(model, 2))
    total = sum(gains[g.name] * g.size for g in groups)
    ratio = 0.99 * len(_DEAD) * gains["b"] / total  # exactly conv b's dead channels' worth of MACs
    # backend none: the gains are the MACs (nothing timed)
    pruned, details, report = _prune_on(model, "none", ratio=ratio)
    kept = {row["group"]: row["kept"] for row in details["layers"]}
    assert kept == {"a": 16, "b": 8, "c": 16}, kept  # a has the most MACs per channel, but every one of them matters
    assert details["allocation"] == "latency" and report["latency"]["comparisons"] == {}
    assert_close(model, pruned)


def _prune_on(model: onnx.ModelProto, backend: str, plugins=(), **options):
    options = dict(structured="channels", allocation="latency", importance="l2", reconstruct="false", sensitivity_samples=4,
                   backoff=-1, channel_multiple=1, **options)  # to the channel: the host's block widths are not under test
    result = graphopt.optimize(model, passes=["prune"], options={"prune": options}, calibration=feeds_for(model, 4, seed=3),
                               verify="off", latency_on=backend, plugins=list(plugins))
    entry = result.report["passes"][0]
    onnx.checker.check_model(result.model, full_check=True)
    return result.model, entry["details"], result.report


class _Device:
    """A fake device on which only conv `slow`'s output channels cost time (1 ms each)."""

    def __init__(self, slow: str):
        self.slow, self.calls = slow, 0

    @graphopt.hookimpl
    def graphopt_latency_backends(self):
        return ["fake-board"]

    @graphopt.hookimpl
    def graphopt_measure_latency(self, model_path, inputs, settings):
        model = onnx.load(model_path)
        weights = {init.name: list(init.dims) for init in model.graph.initializer}
        conv = next(node for node in model.graph.node if node.name == self.slow)
        self.calls += 1
        return {"median_ms": 1.0 + weights[conv.input[1]][0]}


@pytest.mark.parametrize("slow", ["a", "c"])
def test_latency_allocation_prunes_where_the_backend_saves_time(slow):
    model = _cnn()
    device = _Device(slow)
    _, details, report = _prune_on(model, "fake-board", plugins=[device], ratio=0.5)
    kept = {row["group"]: row["kept"] for row in details["layers"]}
    # only the slow conv's channels save time there: the others, costing nothing, stay whole
    assert kept[slow] < 16 and all(kept[group] == 16 for group in kept if group != slow), kept
    assert report["latency"]["backend"] == "fake-board"
    assert report["latency"]["comparisons"]["prune: group"] == 3 and device.calls >= 3 * 2
