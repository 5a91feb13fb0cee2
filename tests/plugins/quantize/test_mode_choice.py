"""graphopt_plugins/quantize/mode_choice.py: which mode `auto` keeps once the candidates are timed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt_plugins.quantize.mode_choice import choose_mode, fastest


class _Timer:
    """A latency backend whose medians are given: what `fastest` decides from them, not the host's noise."""

    def __init__(self, medians: dict[str, float]):
        self.medians = medians

    def compare(self, models, feed, **_):
        return {label: {"median_ms": self.medians[label]} for label in models}


def _model(weight_bytes: int) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.zeros(weight_bytes, np.uint8), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weight])
    return helper.make_model(graph)


def test_modes_timed_within_the_noise_margin_are_one_speed_and_the_smaller_wins():
    candidates = {"static": _model(57_000), "dynamic": _model(139_000)}
    chosen, rows = fastest(_model(135_000), candidates, {}, _Timer({"float": 0.248, "static": 0.248, "dynamic": 0.244}))
    assert chosen == "static"
    assert rows["static"]["bytes"] < rows["dynamic"]["bytes"]


def test_a_mode_clearly_faster_wins_though_larger():
    candidates = {"static": _model(57_000), "dynamic": _model(139_000)}
    chosen, _ = fastest(_model(135_000), candidates, {}, _Timer({"float": 1.0, "static": 0.9, "dynamic": 0.6}))
    assert chosen == "dynamic"


class _Planner:
    """What `choose_mode` asks of a plan: its model, and a feed to time it on."""

    def __init__(self, weight_bytes: int):
        self.weight_bytes = weight_bytes

    def build(self, chosen):
        return _model(self.weight_bytes)

    def timing_feed(self):
        return {}


class _Untouchable:
    def compare(self, *args, **kwargs):
        raise AssertionError("plans that quantize no compute run the same float kernels: nothing to time")


def test_plans_that_quantize_no_compute_are_not_timed_and_the_smallest_wins():
    plans = {"static": (_Planner(57_000), [], {}), "dynamic": (_Planner(139_000), [], {})}
    assert choose_mode(_model(135_000), plans, _Untouchable(), timed=True) == ("static", {})
    plans = {"static": (_Planner(139_000), [], {}), "dynamic": (_Planner(57_000), [], {})}
    assert choose_mode(_model(135_000), plans, _Untouchable(), timed=True)[0] == "dynamic"


def test_plans_that_quantize_compute_are_timed_and_untimed_the_most_int8_layers_win():
    plans = {"static": (_Planner(57_000), ["conv"], {}), "dynamic": (_Planner(139_000), ["a", "b"], {})}
    chosen, rows = choose_mode(_model(135_000), plans, _Timer({"float": 1.0, "static": 0.7, "dynamic": 0.9}), timed=True)
    assert chosen == "static" and rows["dynamic"]["ratio"] == 0.9
    assert choose_mode(_model(135_000), plans, _Untouchable(), timed=False) == ("dynamic", {})
