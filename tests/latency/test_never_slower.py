"""graphopt/latency/never_slower.py: stages that make the model slower beyond noise are rolled back.

Timings are injected (a fake `compare`), so what is tested is the decision, not this machine.
"""

import onnx
import onnx.parser
import pytest

import graphopt
import graphopt.api
import graphopt.latency
from graphopt.latency.never_slower import Stage, check_pipeline_result, keep_never_slower


def _model(tag: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }')
    model.doc_string = tag
    return model


def _compare_by_doc(ms_of: dict[str, float], noise: float = 0.0):
    """A fake backend: each model's median is looked up by its doc_string; `input_again` is off by `noise`."""
    calls = []

    def compare(models, feeds):
        calls.append(list(models))
        first = ms_of[models["input"].doc_string]
        timing = {}
        for label, model in models.items():
            ms = ms_of[model.doc_string] * ((1 + noise) if label == "input_again" else 1)
            timing[label] = {"median_ms": ms, "ratio": ms / first}
        return timing
    compare.calls = calls
    return compare


def test_the_slower_last_stage_is_rolled_back_and_the_timings_reported():
    original = _model("in")
    stages = [Stage("cleanup", _model("a")), Stage("fuse", _model("b"))]
    compare = _compare_by_doc({"in": 10.0, "a": 9.0, "b": 11.0})
    outcome = keep_never_slower(original, stages, compare, {"x": None})
    assert outcome.kept == 1
    assert outcome.report["rolled_back"] == ["fuse"]
    first, second = outcome.report["timings"]
    assert first["after"] == "fuse" and first["slower"] and first["ratio"] == pytest.approx(1.1)
    assert (first["input_ms"], first["output_ms"]) == (10.0, 11.0)
    assert second == {"after": "cleanup", "against": "input", "slower": False, "ratio": pytest.approx(0.9), "noise": 0.0,
                      "timings": 1, "input_ms": 10.0, "output_ms": 9.0}


def test_a_difference_within_the_measured_noise_is_kept():
    stages = [Stage("fuse", _model("b"))]
    compare = _compare_by_doc({"in": 10.0, "b": 10.5}, noise=0.08)  # the input differs from itself by 8%
    outcome = keep_never_slower(_model("in"), stages, compare, {"x": None})
    assert outcome.kept == 1 and outcome.report["rolled_back"] == []
    assert outcome.report["timings"][0]["noise"] == pytest.approx(0.08)
    assert any("input_again" in call for call in compare.calls)  # it was measured, not assumed


def test_within_the_margin_no_noise_measurement_is_needed():
    compare = _compare_by_doc({"in": 10.0, "b": 10.1})  # 1%: under the 2% margin
    outcome = keep_never_slower(_model("in"), [Stage("fuse", _model("b"))], compare, {"x": None})
    assert outcome.kept == 1 and len(compare.calls) == 1


def test_every_stage_slower_gives_back_the_input():
    stages = [Stage("cleanup", _model("a")), Stage("fuse", _model("b"))]
    outcome = keep_never_slower(_model("in"), stages, _compare_by_doc({"in": 10.0, "a": 12.0, "b": 13.0}), {"x": None})
    assert outcome.kept == 0 and outcome.report["rolled_back"] == ["cleanup", "fuse"]


CHAIN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 8] x) => (float[4, 8] y) <float[8] s = {1, 2, 3, 4, 5, 6, 7, 8}, float[8, 8] w = {%s}> {
    i = Identity(x)
    m = Mul(i, s)
    y = MatMul(m, w)
}""" % ", ".join(str((i % 7) * 0.1) for i in range(64))


def test_the_pipeline_rolls_back_the_pass_whose_output_is_slower(monkeypatch):
    """cleanup drops the Identity; fuse folds `s` into `w`. The fake timing calls fuse's output slower."""
    def compare(models, feeds):
        slow = {label: 1.2 if model.graph.node[0].op_type == "MatMul" else 1.0 for label, model in models.items()}
        return {label: {"median_ms": slow[label], "ratio": slow[label] / slow["input"]} for label in models}
    monkeypatch.setattr(graphopt.api, "check_on", lambda backend: compare)
    model = onnx.parser.parse_model(CHAIN)
    result = graphopt.optimize(model, passes=["cleanup", "fuse"])
    cleanup, fuse = result.report["passes"]
    assert cleanup["status"] == "accepted"
    assert fuse["status"] == "rolled_back" and fuse["rolled_back_because"] == "slower than the input"
    assert [node.op_type for node in result.model.graph.node] == ["Mul", "MatMul"]  # cleanup's output
    assert result.report["never_slower"]["rolled_back"] == ["fuse"]
    assert result.report["output"]["nodes"] == 2


def test_turned_off_it_times_nothing(monkeypatch):
    def compare(models, feeds):
        raise AssertionError("timed although turned off")
    monkeypatch.setattr(graphopt.api, "check_on", lambda backend: compare)
    result = graphopt.optimize(onnx.parser.parse_model(CHAIN), passes=["cleanup", "fuse"], never_slower=False)
    assert result.report["never_slower"] == {"checked": False, "reason": "turned off"}
    assert [node.op_type for node in result.model.graph.node] == ["MatMul"]


def test_a_lossy_stage_is_not_undone_nor_what_came_before_it():
    stages = [Stage("fuse", _model("a")), Stage("quantize", _model("b"), lossless=False), Stage("cleanup", _model("c"))]
    compare = _compare_by_doc({"in": 10.0, "a": 12.0, "b": 12.0, "c": 13.0})
    outcome = keep_never_slower(_model("in"), stages, compare, {"x": None})
    assert outcome.kept == 2 and outcome.report["rolled_back"] == ["cleanup"]
    outcome = keep_never_slower(_model("in"), stages[:2], compare, {"x": None})
    assert outcome.kept == 2 and not outcome.report["checked"] and "'quantize', is lossy" in outcome.report["reason"]


def test_a_gap_under_the_timer_resolution_is_not_a_slowdown():
    compare = _compare_by_doc({"in": 0.010, "b": 0.015})  # 1.5x, but 5 µs a run
    outcome = keep_never_slower(_model("in"), [Stage("fuse", _model("b"))], compare, {"x": None})
    assert outcome.kept == 1 and len(compare.calls) == 1


def test_a_lossy_pass_held_to_never_slower_goes_back_when_not_faster_however_little():
    """prune/factorize (`strict`): 1% over the input is inside the lossless margin, and still rolled back."""
    stages = [Stage("fuse", _model("a")), Stage("prune", _model("b"), lossless=False, strict=True, entry={})]
    compare = _compare_by_doc({"in": 10.0, "a": 9.9, "b": 10.1}, noise=0.05)
    outcome = keep_never_slower(_model("in"), stages, compare, {"x": None})
    assert outcome.kept == 1 and outcome.report["rolled_back"] == ["prune"]
    prune, fuse = outcome.report["timings"]
    assert prune["slower"] and prune["ratio"] == pytest.approx(1.01) and prune["timings"] == 3  # the median of three
    assert not fuse["slower"]  # the lossless stage before it keeps its margin


def test_a_strict_stage_is_judged_on_the_whole_result_and_no_timer_floor_excuses_it():
    # prune made its own input faster, but cleanup+fuse cost more than it gained: the result is slower than the input
    stages = [Stage("fuse", _model("a")), Stage("prune", _model("b"), lossless=False, strict=True)]
    compare = _compare_by_doc({"in": 0.010, "a": 0.012, "b": 0.0102})  # 1.02x, 0.2 µs a run
    outcome = keep_never_slower(_model("in"), stages, compare, {"x": None})
    assert outcome.report["rolled_back"] == ["prune"] and outcome.kept == 1  # fuse: 2 µs, under the lossless floor
    kept = keep_never_slower(_model("in"), stages, _compare_by_doc({"in": 10.0, "a": 10.1, "b": 10.0}), {"x": None})
    assert kept.kept == 2 and kept.report["timings"][0] == {"after": "prune", "against": "input", "slower": False, "ratio": 1.0,
                                                             "noise": 0.0, "timings": 1, "input_ms": 10.0, "output_ms": 10.0}


def test_the_report_says_why_a_strict_stage_went_back():
    entry = {}
    stages = [Stage("prune", _model("b"), lossless=False, strict=True, entry=entry)]
    model, _, report = check_pipeline_result(_model("in"), 100, stages, _compare_by_doc({"in": 10.0, "b": 10.3}), {"x": None})
    assert model.doc_string == "in" and report["rolled_back"] == ["prune"]
    assert entry["status"] == "rolled_back"
    assert entry["rolled_back_because"] == "not faster than the input: the model after it timed 1.030x (median of 3 interleaved timings)"


def test_lossless_stages_after_a_lossy_one_are_judged_against_its_output_not_the_input():
    # fp16 on x86: slower than the input by its own choice; a lossless compact after it changes no speed.
    stages = [Stage("fp16", _model("half"), lossless=False), Stage("compact", _model("small"))]
    compare = _compare_by_doc({"in": 10.0, "half": 13.0, "small": 13.0})
    outcome = keep_never_slower(_model("in"), stages, compare, {"x": None})
    assert outcome.kept == 2 and outcome.report["rolled_back"] == []
    assert outcome.report["timings"][0]["against"] == "fp16" and outcome.report["timings"][0]["ratio"] == 1.0
    slower = [Stage("fp16", _model("half"), lossless=False), Stage("compact", _model("worse"))]
    outcome = keep_never_slower(_model("in"), slower, _compare_by_doc({"in": 10.0, "half": 13.0, "worse": 15.0}), {"x": None})
    assert outcome.kept == 1 and outcome.report["rolled_back"] == ["compact"] and "'fp16'" in outcome.baseline

def test_after_a_lossy_stage_that_decides_for_itself_a_strict_one_is_judged_against_its_output():
    stages = [Stage("fp16", _model("half"), lossless=False), Stage("prune", _model("cut"), lossless=False, strict=True)]
    outcome = keep_never_slower(_model("in"), stages, _compare_by_doc({"in": 10.0, "half": 13.0, "cut": 13.1}), {"x": None})
    assert outcome.kept == 1 and outcome.report["rolled_back"] == ["prune"]  # 1.008x fp16's output: not faster
    assert outcome.report["timings"][0]["against"] == "fp16"
    faster = keep_never_slower(_model("in"), stages, _compare_by_doc({"in": 10.0, "half": 13.0, "cut": 12.0}), {"x": None})
    assert faster.kept == 2  # slower than the input, but fp16's slowdown is fp16's own decision


class _RoundsBackend(graphopt.latency.LatencyBackend):
    """A backend whose medians per round are scripted; records how many rounds each comparison took."""

    name = "scripted"

    def __init__(self, ratio_of: dict[str, float]):
        super().__init__()
        self.ratio_of, self.rounds_taken = ratio_of, []

    def _medians(self, models, feeds, seconds, rounds, decided=None):
        medians = [10.0 * self.ratio_of[model.doc_string] for model in models]
        for index in range(rounds):  # as host-ort asks: after each round from the second on but the last
            if decided is not None and 1 <= index < rounds - 1 and decided(medians):
                break
        self.rounds_taken.append(index + 1)
        return medians


def test_a_plain_verdict_ends_the_first_comparison_after_two_rounds():
    from graphopt.latency.never_slower import QUICK_ROUNDS, check_on

    backend = _RoundsBackend({"in": 1.0, "fast": 0.8, "close": 0.95})
    compare = check_on(backend)
    plain = keep_never_slower(_model("in"), [Stage("fuse", _model("fast"))], compare, {"x": None})
    close = keep_never_slower(_model("in"), [Stage("fuse", _model("close"))], compare, {"x": None})
    assert plain.kept == 1 and close.kept == 1
    # 0.8x settles after two rounds; 0.95x is within 10% of the input's median: every round is timed.
    assert backend.rounds_taken == [2, QUICK_ROUNDS]
    assert plain.report["timings"][0]["ratio"] == 0.8 and plain.report["timings"][0]["timings"] == 1


def test_a_plainly_slower_output_is_still_timed_beside_the_input_copy_in_full_rounds():
    from graphopt.latency.never_slower import check_on

    backend = _RoundsBackend({"in": 1.0, "slow": 1.3})
    outcome = keep_never_slower(_model("in"), [Stage("fuse", _model("slow"))], check_on(backend), {"x": None})
    assert outcome.kept == 0 and outcome.report["rolled_back"] == ["fuse"]
    # the quick look ends early; the three timings with the input's copy (the noise) run every round
    assert backend.rounds_taken == [2, 3, 3, 3]
