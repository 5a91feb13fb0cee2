"""The pass holds its budget on every sample, as the verifier does, not on all samples pooled."""

import numpy as np
from quantize_support import calibration_for, run, single_op_model

import graphopt
from graphopt.verify.metrics import output_metrics


def test_a_quiet_sample_is_judged_on_its_own():
    # One sample 50x quieter than the rest: the activation scale the loud ones set leaves it a
    # few int8 steps. Pooled over all samples the cosine stays high and hides it.
    model = single_op_model("MatMul")
    samples = calibration_for(model, samples=8)
    samples["x"][0] *= 0.02
    result = graphopt.optimize(model, passes=["quantize"], calibration=samples, inputs=samples,
                               options={"quantize": {"latency": "off", "mode": "static"}}, budget="cos=0.99")
    entry = result.report["passes"][0]
    assert entry["status"] in ("accepted", "unchanged"), entry
    for index in range(len(samples["x"])):
        feeds = {"x": samples["x"][index]}
        (expected,), (actual,) = run(model, feeds), run(result.model, feeds, optimize=True)
        assert output_metrics(expected, actual)["cosine"] >= 0.99, index
