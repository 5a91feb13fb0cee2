"""A quantize plan that met the budget on the samples it judged but misses it in the pipeline's
verification is backed off (aiming further inside the budget, at last quantizing nothing), so the
run hands back a result instead of failing."""

import numpy as np
import pytest
from quantize_support import calibration_for, single_op_model

import graphopt
from graphopt.verify.metrics import Budget
from graphopt_plugins.quantize.quantize_pass import Quantize


def test_each_weaker_setting_aims_further_inside_the_budget_and_the_last_quantizes_nothing():
    changed = graphopt.PassResult(changed=True, stats={})
    pass_, seen = Quantize(), []
    while (pass_ := pass_.weaker(None, changed)) is not None:
        seen.append(pass_.options.safety)
    assert seen == [0.5, 0.8, 0.95, 1.0]
    assert Quantize(Quantize.Options(safety=0.5)).weaker(None, graphopt.PassResult(changed=False)) is None


def test_a_tightened_budget_gives_up_that_share_of_its_room():
    assert Budget(cos=0.99).tightened(0.5).cos == pytest.approx(0.995)
    assert Budget(sqnr=30.0).tightened(0.9).sqnr == pytest.approx(40.0)
    assert Budget(cos=0.99, sqnr=20.0).tightened(1.0) == Budget(cos=1.0, sqnr=float("inf"))


def test_a_plan_the_verifier_refuses_is_backed_off_to_a_result_not_a_failure():
    model = single_op_model("MatMul")
    samples = calibration_for(model, samples=12)
    samples["x"][8:] *= 30.0  # beyond the 8 samples quantize reads (max_samples): its ranges clip these
    result = graphopt.optimize(model, passes=["quantize"], calibration=samples,
                               options={"quantize": {"latency": "off", "mode": "static", "max_samples": 8}})
    entry = result.report["passes"][0]
    assert entry["status"] in ("accepted", "unchanged"), entry["status"]
    tries = entry["tries"]
    assert tries[0]["options"]["safety"] == 0.0 and tries[0]["ok"] is False  # the plan as first made fails
    steps = [step["options"]["safety"] for step in tries[1:]]
    assert steps and steps == [0.5, 0.8, 0.95, 1.0][:len(steps)]
    # the clipped activations refuse every activation plan; what is kept is at most int8 weights of a float MatMul
    assert not any(node.op_type == "QuantizeLinear" for node in result.model.graph.node)
    if entry["status"] == "unchanged":
        assert entry["details"]["reason"].startswith("backed off")

