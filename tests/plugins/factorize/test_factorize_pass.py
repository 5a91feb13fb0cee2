"""graphopt_plugins/factorize/factorize_pass.py: what fires, what must not, budget, idempotence, data sources."""

import logging

import numpy as np
import onnx
import onnx.parser
import pytest

import graphopt
import torch_models
import trait_models
from factorize_support import factorize, op_counts, run, single_layer
from graphopt.verify.metrics import output_metrics
from graphopt_plugins.factorize.factorize_pass import Factorize

RNG = np.random.default_rng(0)


def _low_rank_matmul(width=64, rank=8):
    """A MatMul whose weight is rank-8 plus a little noise: factorizing it pays and is accurate."""
    weight = RNG.standard_normal((width, rank)) @ RNG.standard_normal((rank, width)) / rank
    weight += 0.01 * RNG.standard_normal((width, width))
    return single_layer("MatMul", [4, width], weight)


def _calibration(shape, n=8, seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)}


def _assert_within(model, factorized, feeds, cos):
    for expected, actual in zip(run(model, feeds), run(factorized, feeds), strict=True):
        assert output_metrics(expected, actual)["cosine"] >= cos


class _Warnings(logging.Handler):
    """Collects the pass's warnings on its own logger (CLI tests reconfigure the `graphopt` logger)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger = logging.getLogger("graphopt.pass.factorize")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)  # `--quiet` in an earlier CLI test leaves `graphopt` at ERROR
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def _assert_idempotent(factorized, calibration, **options):
    again, entry = factorize(factorized, calibration, **options)
    assert entry["changed"] is False and entry["status"] == "unchanged"
    assert again.SerializeToString() == factorized.SerializeToString()


def test_a_low_rank_matmul_is_factorized_within_budget_and_only_once():
    model = _low_rank_matmul()
    calibration = _calibration([4, 64], n=32)  # 24 fitted samples, 8 held out
    factorized, entry = factorize(model, calibration, rank_by="max_error", max_error=0.05)
    onnx.checker.check_model(factorized, full_check=True)
    assert entry["changed"] is True and op_counts(factorized) == {"MatMul": 2}
    layer = entry["details"]["layers"][0]
    assert layer["rank"] == 8 and layer["params_after"] == 8 * 128 < layer["params_before"]
    assert layer["macs_after"] == 4 * 8 * 128 and layer["macs_before"] == 4 * 64 * 64
    assert layer["error"] <= 0.05 and layer["error_on"] == "data"
    _assert_within(model, factorized, {"x": calibration["x"][0]}, 0.99)
    _assert_idempotent(factorized, calibration, rank_by="max_error", max_error=0.05)


def test_a_layer_that_would_not_save_macs_is_left_alone():
    # 8×64: any rank r costs r·72 against 512, so only r ≤ 6 would save, below one rank multiple.
    model = single_layer("MatMul", [4, 8], RNG.standard_normal((8, 64)))
    factorized, entry = factorize(model, _calibration([4, 8]), rank_by="rank_ratio", rank_ratio=0.1)
    assert entry["changed"] is False
    assert factorized.SerializeToString() == model.SerializeToString()


def test_full_rank_weight_within_a_tight_budget_is_left_alone():
    model = single_layer("MatMul", [4, 64], RNG.standard_normal((64, 64)))
    factorized, entry = factorize(model, _calibration([4, 64]), rank_by="rank_ratio", rank_ratio=0.25, backoff=1)
    assert entry["changed"] is False and entry["details"]["factorized"] == 0
    assert factorized.SerializeToString() == model.SerializeToString()


def test_conv_channel_decomposition_through_the_pass():
    # 32 → 32 channels, 3×3, weight rank 8 over (Cin·k·k): the k×k Cin→8 + 1×1 8→32 pair is exact-ish.
    weight = (RNG.standard_normal((32, 8)) @ RNG.standard_normal((8, 32 * 9))).reshape(32, 32, 3, 3) / 8
    model = single_layer("Conv", [1, 32, 12, 12], weight, bias=RNG.standard_normal(32), pads=[1, 1, 1, 1])
    calibration = _calibration([1, 32, 12, 12], n=4)
    factorized, entry = factorize(model, calibration, rank_by="energy", energy=0.999)
    onnx.checker.check_model(factorized, full_check=True)
    assert op_counts(factorized) == {"Conv": 2}
    layer = entry["details"]["layers"][0]
    assert layer["kind"] == "conv_channel" and layer["rank"] == 8
    assert layer["macs_after"] == 144 * 8 * (288 + 32)
    _assert_within(model, factorized, {"x": calibration["x"][0]}, 0.999)
    _assert_idempotent(factorized, calibration, rank_by="energy", energy=0.999)


def test_depthwise_conv_is_left_alone():
    model = single_layer("Conv", [1, 16, 8, 8], RNG.standard_normal((16, 1, 3, 3)), group=16, pads=[1, 1, 1, 1])
    factorized, entry = factorize(model, _calibration([1, 16, 8, 8], n=2), rank_by="rank_ratio", rank_ratio=0.1)
    assert entry["changed"] is False
    assert entry["details"]["left_alone"] == {"grouped or depthwise Conv": 1}


def test_budget_backoff_keeps_the_pass_within_its_own_budget():
    # A weight of rank 16 with decaying singular values: max_error 0.4 keeps too few ranks for
    # cos 0.9999, so the pass halves its strength until the rank kept meets the budget.
    spectrum = np.geomspace(1.0, 0.05, 16)
    weight = RNG.standard_normal((64, 16)) * spectrum @ RNG.standard_normal((16, 64)) + 1e-4 * RNG.standard_normal((64, 64))
    model = single_layer("MatMul", [4, 64], weight)
    calibration = _calibration([4, 64])
    factorized, entry = factorize(model, calibration, rank_by="max_error", max_error=0.4, budget="cos=0.9999")
    details = entry["details"]
    assert entry["changed"] is True and details["strength"] < 1.0
    assert details["calibration_metrics"]["y"]["cosine"] >= 0.9999
    assert details["layers"][0]["rank"] <= 24
    _assert_within(model, factorized, {"x": _calibration([4, 64], n=1, seed=7)["x"][0]}, 0.999)


def test_global_macs_target_on_a_torch_transformer_runs_in_onnxruntime():
    model = torch_models.transformer("torchscript", 17)
    rng = np.random.default_rng(0)
    calibration = {"ids": rng.integers(0, 100, (8, 2, 16)), "mask": np.ones((8, 2, 16), np.int64)}
    # the MACs target is under test; a 10% cut of a 0.1 ms encoder times at about 1.0x, either way
    result = graphopt.optimize(model, passes=["factorize"], options={"factorize": {"rank_by": "target", "target": "macs=0.1",
                                                                                   "never_slower": False}},
                               calibration=calibration, inputs=calibration, budget="cos=0.98")
    entry = result.report["passes"][0]
    assert entry["status"] == "accepted", entry
    details = entry["details"]
    assert details["macs_after"] < details["macs_before"]
    assert details["model_macs_before"] - (details["macs_before"] - details["macs_after"]) > 0
    onnx.checker.check_model(result.model, full_check=True)
    feeds = torch_models.transformer_feeds()
    _assert_within(model, result.model, feeds, 0.97)


def test_without_calibration_the_verifier_inputs_are_used_with_a_warning():
    model = _low_rank_matmul()
    with _Warnings() as warnings:
        result = graphopt.optimize(model, passes=["factorize"], options={"factorize": {"max_error": 0.05}},
                                   inputs=_calibration([4, 64]))
    entry = result.report["passes"][0]
    assert entry["details"]["data"] == "sample_inputs" and entry["details"]["method"] == "data"
    assert any("no --calibration" in message for message in warnings.messages)


def test_without_any_data_it_falls_back_to_plain_svd_with_a_warning():
    model = _low_rank_matmul()
    with _Warnings() as warnings:
        factorized, entry = factorize(model, None, max_error=0.05)
    assert entry["details"]["method"] == "svd" and entry["details"]["layers"][0]["error_on"] == "weights"
    assert any("plain SVD" in message for message in warnings.messages)
    _assert_within(model, factorized, {"x": _calibration([4, 64])["x"][0]}, 0.99)


@pytest.mark.parametrize("bad", [{"method": "qr"}, {"rank_by": "luck"}, {"energy": 1.5}, {"target": "flops=0.2"},
                                 {"target": "macs=2"}, {"rank_multiple": 0}, {"conv": "both"}, {"ops": "Add"},
                                 {"budget": "cos"}])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        Factorize.Options(**bad)


def test_weaker_halves_then_hands_the_model_back_unchanged_under_rank_by_budget():
    result = graphopt.PassResult(changed=True, stats={"strength": 0.4})
    assert Factorize().weaker(None, result).options.strength == pytest.approx(0.2)
    nearly = graphopt.PassResult(changed=True, stats={"strength": 0.02})
    last = Factorize().weaker(None, nearly)
    assert last is not None and last.options.strength < 1e-6  # caps the search at no step: unchanged, not failed
    assert last.weaker(None, graphopt.PassResult(changed=False, stats={})) is None
    assert Factorize(Factorize.Options(rank_by="max_error")).weaker(None, nearly) is None  # the rules still stop at 1/64


def test_rank_by_budget_takes_no_step_at_the_weakest_strength():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 4)) @ rng.normal(size=(4, 64))  # rank 4: cheap to factorize within any budget
    model = single_layer("MatMul", [16, 64], weight)
    data = {"x": rng.normal(size=(8, 16, 64)).astype(np.float32)}
    full = graphopt.optimize(model, passes=["factorize"], calibration=data, verify="off")
    assert full.report["passes"][0]["changed"] and full.report["passes"][0]["details"]["rank_by"] == "budget"
    none = graphopt.optimize(model, passes=["factorize"], options={"factorize": {"strength": 1e-9}}, calibration=data,
                             verify="off")
    assert not none.report["passes"][0]["changed"]


def test_a_matmul_fed_by_an_onnxruntime_contrib_op_is_factorized():
    # onnxruntime's transformer optimizer leaves com.microsoft ops, whose outputs ONNX's
    # inference cannot type: the MatMul after one is still fitted to its real inputs
    weight = RNG.standard_normal((64, 8)) @ RNG.standard_normal((8, 64)) / 8
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
        g (float[4,64] x) => (float[4,64] y) {
            h = com.microsoft.Gelu(x)
            y = MatMul(h, w)
        }''')
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight.astype(np.float32), "w"))
    calibration = _calibration([4, 64], n=16)
    factorized, entry = factorize(model, calibration, rank_by="max_error", max_error=0.05)
    assert entry["changed"] is True and op_counts(factorized)["MatMul"] == 2
    _assert_within(model, factorized, {"x": calibration["x"][0]}, 0.99)



def test_a_saturated_classifier_is_judged_at_its_decision_boundary():
    # Judged on its 32 calibration samples' probabilities alone (cos 0.9999), the factorization
    # kept 97% of its saving and gave cos 0.20 on 64 new inputs of the same distribution.
    model, calibration, fresh = trait_models.confident_classifier()
    result = graphopt.optimize(model, passes=["factorize"], calibration=calibration)
    expected, got = run(model, {"x": fresh})[0], run(result.model, {"x": fresh})[0]
    assert min(output_metrics(e, g)["cosine"] for e, g in zip(expected, got)) >= 0.99
