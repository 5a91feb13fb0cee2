"""graphopt_plugins/quantize/judging.py: a plan the search refuses is refused at its first sample that breaks the budget."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from quantize_support import calibration_for, quantize

from graphopt.verify.metrics import Budget
from graphopt.verify.runner import stacked_outputs
from graphopt_plugins.quantize.judging import SampleJudge, judged_outputs


def _conv(scale: float = 1.0, layers: int = 1, outlier_layer: int | None = None) -> onnx.ModelProto:
    """x -> (Conv 3x3, no bias -> Relu) x layers -> y; `scale` multiplies every weight; `outlier_layer` is hard to quantize."""
    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for index in range(layers):
        weight = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2 * scale
        if index == outlier_layer:
            weight[:, :, 1, 1] *= 0.01
            weight[:, 0, 1, 1] = 40.0
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        out = "y" if index == layers - 1 else f"a{index}"
        nodes += [helper.make_node("Conv", [current, f"w{index}"], [f"c{index}"], name=f"conv{index}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{index}"], [out], name=f"relu{index}")]
        current = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def _samples(count: int, silent: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((count, 1, 8, 8, 8)).astype(np.float32)
    x[list(silent)] = 0.0  # no bias: a zero input gives a silent output
    return {"x": x}


def test_a_plan_that_holds_runs_every_sample_and_gives_the_outputs_stacked_outputs_gives():
    model, samples = _conv(), _samples(5)
    reference = stacked_outputs(model, samples, optimize=True)
    outputs, broken, refusal, runs = judged_outputs(model, samples, SampleJudge(reference, Budget(cos=0.99)), optimize=True, first=3)
    assert broken is None and refusal is None and runs == 5
    assert np.array_equal(outputs["y"], reference["y"])


def test_a_plan_that_breaks_the_budget_stops_at_the_first_sample_it_runs():
    samples = _samples(5)
    reference = stacked_outputs(_conv(), samples, optimize=True)
    outputs, broken, refusal, runs = judged_outputs(_conv(scale=1.3), samples, SampleJudge(reference, Budget(sqnr=30.0)),
                                                    optimize=True, first=3)
    assert outputs is None and broken == 3 and runs == 1
    assert not refusal["ok"] and refusal["sqnr_db"] < 30.0 and "(sample 3)" in refusal["violations"][0]
    # without a judge (a plan whose metrics are reported), every sample runs
    outputs, broken, _, runs = judged_outputs(_conv(scale=1.3), samples, None, optimize=True, first=3)
    assert outputs["y"].shape[0] == 5 and broken is None and runs == 5


def test_a_silent_sample_left_silent_refuses_nothing_as_the_verifier_does_not_judge_it():
    samples = _samples(4, silent=(0,))
    reference = stacked_outputs(_conv(), samples, optimize=True)
    assert not reference["y"][0].any()
    judge = SampleJudge(reference, Budget(cos=0.99))
    _, broken, _, runs = judged_outputs(_conv(scale=-1.0), samples, judge, optimize=True, first=0)
    assert broken == 1 and runs == 2  # sample 0 (silent in both) is passed over; sample 1 refuses the plan


def test_the_search_chooses_as_judging_every_sample_on_fewer_runs(monkeypatch):
    model = _conv(layers=4, outlier_layer=1)
    calibration = calibration_for(model, samples=8)  # 6 fitted, all 8 judged (held out first)
    _, loose, _ = quantize(model, calibration, latency="off", budget="cos:0.5")
    budget = f"sqnr:{loose['sqnr_db'] + 4.0}"  # unreachable with every layer quantized: the search refuses plans
    _, early, _ = quantize(model, calibration, latency="off", budget=budget, workers=1)
    _, side_by_side, _ = quantize(model, calibration, latency="off", budget=budget, workers=2)
    monkeypatch.setattr(SampleJudge, "breaks", lambda self, index, outputs: None)
    _, whole, _ = quantize(model, calibration, latency="off", budget=budget, workers=1)
    decisions = lambda stats: [(r["node"], r["decision"], r["sensitivity_sqnr_db"]) for r in stats["layers"]]  # noqa: E731
    assert decisions(early) == decisions(whole) == decisions(side_by_side) and early["kept_float"] >= 1
    assert side_by_side["cosine"] == early["cosine"]
    assert (early["cosine"], early["sqnr_db"], early["plans_evaluated"]) == (whole["cosine"], whole["sqnr_db"], whole["plans_evaluated"])
    # Pinned: every refused plan is refused on its first sample; a plan that holds runs all 8.
    assert whole["plans_refused_early"] == 0 and early["plans_refused_early"] >= 1
    assert early["plan_sample_runs"] == whole["plan_sample_runs"] - 7 * early["plans_refused_early"]


def test_samples_run_side_by_side_give_the_same_outputs_and_refusal():
    samples = _samples(5)
    reference = stacked_outputs(_conv(), samples, optimize=True)
    judge = SampleJudge(reference, Budget(sqnr=30.0))
    outputs, _, _, runs = judged_outputs(_conv(), samples, judge, optimize=True, first=2, workers=2)
    assert runs == 5 and np.array_equal(outputs["y"], reference["y"])
    _, broken, _, runs = judged_outputs(_conv(scale=1.3), samples, judge, optimize=True, first=2, workers=2)
    assert broken == 2 and runs == 2  # the first sample in order refuses; its batch-mate ran beside it
