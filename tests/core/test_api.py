"""The Python API: in-memory in and out, no disk writes, no prints, hooks for instrumentation."""

import dataclasses
import os
import types

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

import graphopt

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) <float[3] a = {1.0, 2.0, 3.0}, float[3] b = {1.0, 2.0, 3.0}> {
  i = Identity(x)
  s = Add(i, a)
  t = Add(s, b)
  y = Relu(t)
}"""


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_model_proto_in_model_proto_out_and_the_input_is_untouched(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = onnx.parser.parse_model(MODEL)
    before = model.SerializeToString()
    result = graphopt.optimize(model, passes=["cleanup"])
    assert isinstance(result.model, onnx.ModelProto)
    assert model.SerializeToString() == before
    assert os.listdir(tmp_path) == []
    assert capsys.readouterr() == ("", "")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, x), _run(model, x), rtol=1e-6)
    assert result.report["schema"] == "graphopt.report/1"
    entry = result.report["passes"][0]
    assert entry["details"]["passthrough_removed"] == 1 and entry["details"]["initializers_deduped"] == 1
    assert result.report["verification"]["end_to_end"]["ok"] is True


def test_verify_end_checks_once_at_the_end():
    result = graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["cleanup"], verify="end")
    assert result.report["passes"][0]["verification"] is None
    assert result.report["verification"]["end_to_end"]["mode"] == "lossless"


def test_hooks_see_every_pass_and_a_lossless_pass_that_breaks_numerics_is_rolled_back():
    seen = []

    class Recorder:
        @graphopt.hookimpl
        def graphopt_after_pass(self, index, pass_, accepted):
            seen.append((index, pass_.name, accepted))

    class Sabotage(graphopt.Pass):
        """Claims to be lossless but negates the first initializer."""

        name = "sabotage"

        def run(self, graph, ctx):
            constant = next(t for t in graph.tensors().values() if hasattr(t, "values") and t.values.size > 1)
            constant.values = -constant.values
            return graphopt.PassResult(changed=True, stats={"negated": 1})

    plugin = types.SimpleNamespace(graphopt_register_passes=graphopt.hookimpl(lambda registry: registry.add(Sabotage)))
    with pytest.raises(graphopt.VerificationError, match=r"pass 'sabotage' failed verification: output 'y'"):
        graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["cleanup", "sabotage"], plugins=[plugin, Recorder()])
    assert seen == [(0, "cleanup", True), (1, "sabotage", False)]
    result = graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["sabotage", "cleanup"], plugins=[plugin],
                               keep_going=True)
    assert [(p["name"], p["status"]) for p in result.report["passes"]] == [("sabotage", "rolled_back"), ("cleanup", "accepted")]
    assert result.report["passes"][0]["verification"]["first_divergence"]["op"] == "Add"


def test_a_pass_whose_output_only_the_full_check_rejects_is_a_pass_error():
    class Mistype(graphopt.Pass):
        """Makes the bias int64: the structure stays valid, Add's types no longer match."""

        name = "mistype"

        def run(self, graph, ctx):
            constant = next(t for t in graph.tensors().values() if hasattr(t, "values") and t.values.size > 1)
            constant.values = constant.values.astype(np.int64)
            return graphopt.PassResult(changed=True, stats={})

    plugin = types.SimpleNamespace(graphopt_register_passes=graphopt.hookimpl(lambda registry: registry.add(Mistype)))
    with pytest.raises(graphopt.PassError, match="pass 'mistype' produced an invalid model") as caught:
        graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["mistype"], plugins=[plugin], verify="off")
    assert caught.value.pass_name == "mistype"


def test_check_and_infer_gives_the_graph_the_shapes_inference_gives():
    from graphopt.model import Model, check_and_infer, infer_model_shapes, to_proto

    model = onnx.parser.parse_model(MODEL)
    running = Model.imported(model)
    size = check_and_infer(running)
    expected = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in infer_model_shapes(model).graph.value_info}
    assert set(expected) == {"i", "s", "t"}
    assert {name: list(running.graph.tensors()[name].shape) for name in expected} == expected
    assert abs(size - to_proto(running).ByteSize()) <= 64  # sized from the placeholder form's bytes


def test_check_and_infer_sizes_a_model_from_its_placeholder_form_and_its_weights():
    from graphopt.model import Model, check_and_infer, to_proto

    # demo.onnx has large weights: they are counted by their bytes, never serialised to size them.
    model = onnx.load(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "examples/demo/demo.onnx"))
    running = Model.imported(model)
    stored = to_proto(running)
    with_value_info = check_and_infer(running)
    without = check_and_infer(running, value_info=False)
    assert abs(with_value_info - to_proto(running).ByteSize()) < 0.01 * stored.ByteSize()
    del stored.graph.value_info[:]
    assert abs(without - stored.ByteSize()) < 0.01 * stored.ByteSize()


def test_dump_dir_writes_the_model_after_each_pass(tmp_path):
    graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["cleanup"], dump_dir=tmp_path)
    dumped = tmp_path / "01_cleanup.onnx"
    onnx.checker.check_model(str(dumped), full_check=True)
    assert len(onnx.load(str(dumped)).graph.node) == 3


def test_options_reach_the_pass():
    result = graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["cleanup"],
                               options={"cleanup": {"remove_passthrough": False}})
    assert result.report["passes"][0]["options"]["remove_passthrough"] is False
    assert "Identity" in [node.op_type for node in result.model.graph.node]


def test_an_instrumentation_hook_that_raises_is_named():
    class Faulty:
        @graphopt.hookimpl
        def graphopt_before_pass(self, index):
            raise RuntimeError("disk full")

    with pytest.raises(graphopt.PluginError, match=r"plugin '.*' failed in graphopt_before_pass: RuntimeError: disk full"):
        graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["cleanup"], plugins=[Faulty()])


def test_an_unchanged_model_comes_back_as_given_without_inferred_shapes(tmp_path):
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) { r = Relu(x)
    y = Neg(r) }""")
    assert not model.graph.value_info
    result = graphopt.optimize(model, passes=["cleanup"])
    assert result.report["passes"][0]["status"] == "unchanged"
    assert result.model.SerializeToString() == model.SerializeToString()
    assert result.model is not model
    assert result.report["input"]["bytes"] == result.report["output"]["bytes"] == model.ByteSize()


def test_a_changed_model_does_not_gain_value_info_it_did_not_have():
    result = graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["cleanup"])
    assert result.report["passes"][0]["status"] == "accepted"
    assert len(result.model.graph.value_info) == 0
    # measured by the last check: the placeholder form's bytes plus the weights' byte counts
    assert abs(result.report["output"]["bytes"] - result.model.ByteSize()) <= 64


def test_the_output_summary_counts_macs_from_inferred_shapes_even_when_they_are_not_shipped():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 8] x) => (float[4, 16] y) <float[8, 16] w = {%s}> {
          i = Identity(x)
          m = MatMul(i, w)
          y = Relu(m)
        }""" % ", ".join(["0.5"] * 128))
    result = graphopt.optimize(model, passes=["cleanup"])
    assert len(result.model.graph.value_info) == 0
    assert result.report["input"]["macs"] == result.report["output"]["macs"] == 4 * 8 * 16


def test_model_bytes_counts_the_weights_left_in_data_files():
    from graphopt.summary import model_bytes

    model = onnx.load(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "examples/demo/demo.onnx"))
    assert model_bytes(model) == model.ByteSize()


def test_per_pass_sizes_are_measured_as_the_output_is_stored():
    result = graphopt.optimize(onnx.parser.parse_model(MODEL), passes=["cleanup"])
    entry = result.report["passes"][0]
    assert entry["bytes_before"] == result.report["input"]["bytes"]
    # per pass, from the placeholder form's bytes and the weights' byte counts
    assert entry["bytes_after"] == result.report["output"]["bytes"]
    assert abs(entry["bytes_after"] - result.model.ByteSize()) <= 64


def test_fitting_data_prefers_calibration_then_the_verifier_inputs():
    calibration = {"x": np.ones((5, 2, 3), np.float32)}
    verifier = {"x": np.zeros((3, 2, 3), np.float32)}
    samples, origin = graphopt.PassContext(opset=17, calibration=calibration, sample_inputs=verifier).fitting_data(2)
    assert origin == "calibration" and samples["x"].shape == (2, 2, 3) and samples["x"].all()
    samples, origin = graphopt.PassContext(opset=17, sample_inputs=verifier).fitting_data()
    assert origin == "sample_inputs" and samples["x"].shape == (3, 2, 3)
    assert graphopt.PassContext(opset=17).fitting_data(4) == (None, "none")


def test_track_draws_a_bar_only_when_the_run_shows_progress(capsys):
    assert list(graphopt.PassContext(opset=17).track(range(3), desc="calibrating")) == [0, 1, 2]
    assert "calibrating" not in capsys.readouterr().err
    assert list(graphopt.PassContext(opset=17, progress=True).track(range(3), desc="calibrating")) == [0, 1, 2]
    assert "calibrating" in capsys.readouterr().err


def test_the_pipeline_hands_its_progress_setting_to_passes(tmp_path):
    seen = []

    class Spy(graphopt.Pass):
        """Records whether it was told to show progress."""
        name = "spy"

        def run(self, graph, ctx):
            seen.append(ctx.progress)
            return graphopt.PassResult(changed=False)

    from graphopt.pipeline import PipelineSettings, run_pipeline
    from graphopt.registry import load_registry
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    for progress in (False, True):
        run_pipeline(model, [Spy()], load_registry(), PipelineSettings(progress=progress, verify="off"), verifier=None)
    assert seen == [False, True]


def test_a_pass_runs_on_the_graph_the_accepted_pass_before_it_left(tmp_path):
    graphs = []

    class Rename(graphopt.Pass):
        """Renames the graph's only node, once."""
        name = "rename"

        def run(self, graph, ctx):
            graphs.append(graph)
            node = graph.nodes[0]
            if node.name == "renamed":
                return graphopt.PassResult(changed=False)
            node.name = "renamed"
            return graphopt.PassResult(changed=True)

    class Refuse(graphopt.Pass):
        """Always fails verification: changes the output."""
        name = "refuse"

        def run(self, graph, ctx):
            graphs.append(graph)
            graph.nodes[0].op = "Neg"
            return graphopt.PassResult(changed=True)

    from graphopt.pipeline import PipelineSettings, run_pipeline
    from graphopt.registry import load_registry
    from graphopt.verify import Verifier, generate_feeds, split_samples
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    verifier = Verifier(split_samples(generate_feeds(model)))
    outcome = run_pipeline(model, [Rename(), Rename(), Refuse(), Rename()], load_registry(),
                           PipelineSettings(keep_going=True), verifier=verifier)
    # the second rename reuses the first's graph (and finds nothing to do); the one after the
    # rolled-back pass gets a fresh import of the model that was kept
    assert graphs[1] is graphs[0] and graphs[2] is graphs[1] and graphs[3] is not graphs[2]
    assert [e["status"] for e in outcome.passes] == ["accepted", "unchanged", "rolled_back", "unchanged"]
    assert [n.op_type for n in outcome.model.graph.node] == ["Relu"] and outcome.model.graph.node[0].name == "renamed"


def test_a_lossy_result_verified_on_its_own_calibration_samples_says_so():
    model = onnx.parser.parse_model(MODEL)
    samples = {"x": np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)}
    options = {"scale-weights": {"factor": 1.001}}
    fitted = graphopt.optimize(model, passes=["scale-weights"], options=options, calibration=samples, never_slower=False)
    assert fitted.report["passes"][0]["status"] == "accepted"
    assert any("verified on the calibration= samples" in text for text in fitted.report["warnings"])
    unseen = graphopt.optimize(model, passes=["scale-weights"], options=options, calibration=samples, inputs=samples,
                               never_slower=False)
    assert not any("calibration= samples" in text for text in unseen.report["warnings"])
    lossless = graphopt.optimize(model, passes=["cleanup"], calibration=samples, never_slower=False)
    assert not any("calibration= samples" in text for text in lossless.report["warnings"])
