"""The back-off protocol (Pass.weaker): a lossy pass that misses its budget on --inputs is retried
weaker, a bounded number of times, and fails only when its weakest setting still misses."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import pytest

import graphopt
from graphopt.pipeline import BACKOFF_STEPS

_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) <float[4] w = {1.0, 1.0, 1.0, 1.0}> { y = Mul(x, w) }"""


class _Shrink(graphopt.Pass):
    """Scales the weight by (1 - amount) on its last element: a stand-in lossy pass."""

    name = "shrink-weight"
    lossless = False

    @dataclasses.dataclass
    class Options:
        amount: float = 0.8  # how much of the last weight is removed
        weakest: float = 0.01  # below this, no weaker setting is offered
        budget: str = ""

    def run(self, graph, ctx):
        weight = next(tensor for tensor in graph.tensors().values() if tensor.name == "w")
        values = np.array(weight.values, dtype=np.float32)
        values[-1] *= 1.0 - self.options.amount
        weight.values = values
        return graphopt.PassResult(changed=True, stats={"amount": self.options.amount})

    def weaker(self, verdict, result=None):
        amount = self.options.amount / 2
        return None if amount < self.options.weakest else _Shrink(dataclasses.replace(self.options, amount=amount))


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(_Shrink)


def _plugin():
    module = types.ModuleType("shrink_plugin")
    module.graphopt_register_passes = graphopt_register_passes
    return module


_INPUTS = {"x": np.ones((2, 4), np.float32)}


def test_a_missed_budget_backs_off_to_a_setting_that_holds():
    # cosine of (1,1,1,1-a) with ones: a=0.8 → 0.93, 0.4 → 0.989, 0.2 → 0.997
    result = graphopt.optimize(onnx.parser.parse_model(_MODEL), passes=["shrink-weight"], inputs=_INPUTS,
                               budget="cos=0.995", plugins=[_plugin()])
    entry = result.report["passes"][0]
    assert entry["status"] == "accepted"
    assert [t["options"]["amount"] for t in entry["tries"]] == [0.8, 0.4, 0.2]
    assert [t["ok"] for t in entry["tries"]] == [False, False, True]
    assert entry["options"]["amount"] == 0.2 and entry["details"]["amount"] == 0.2
    weight = onnx.numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "w"))
    assert weight[-1] == pytest.approx(0.8)


def test_when_even_the_weakest_setting_misses_the_report_says_what_was_tried():
    with pytest.raises(graphopt.VerificationError) as caught:
        graphopt.optimize(onnx.parser.parse_model(_MODEL), passes=["shrink-weight"], inputs=_INPUTS,
                          budget="cos=0.99999999", plugins=[_plugin()], options={"shrink-weight": {"weakest": 0.0}})
    assert caught.value.exit_code == 1
    entry = caught.value.report["passes"][0]
    assert entry["status"] == "rolled_back" and len(entry["tries"]) == BACKOFF_STEPS + 1
    assert not any(t["ok"] for t in entry["tries"])


def test_a_missed_end_to_end_budget_lists_the_worst_tensors_in_the_report():
    # Verified only at the end, there is no back-off: the report must say where the error is.
    two_layers = """<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) <float[4] w = {1.0, 1.0, 1.0, 1.0}, float[4] v = {2.0, 2.0, 2.0, 2.0}>
{ h = Mul(x, w)
  y = Mul(h, v) }"""
    with pytest.raises(graphopt.VerificationError) as caught:
        graphopt.optimize(onnx.parser.parse_model(two_layers), passes=["shrink-weight"], inputs=_INPUTS,
                          budget="cos=0.999", verify="end", plugins=[_plugin()])
    assert caught.value.exit_code == 1
    assert "worst tensor 'h'" in caught.value.message
    rows = caught.value.report["verification"]["worst_tensors"]
    assert [row["tensor"] for row in rows] == ["h", "y"]  # both carry the error; h is where it starts
    assert all(row["cosine"] < 0.999 for row in rows)
