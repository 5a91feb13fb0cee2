"""How often a run crosses into ONNX's C++ side and onnxruntime: counted, so the counts cannot creep back.

Per accepted pass the pipeline exports its graph once and serialises its output once with its
weights (for the onnxruntime session that verifies it) and once in placeholder form (large
weights as dims-only inputs, taken from that export), which it checks and shape-infers once. At load the placeholder form is built, checked
and inferred once. What a pass does inside its own `run` (quantize's sensitivity sessions,
fuse's shape refreshes) is its own business and not counted here.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_graphsurgeon
import onnxruntime
from onnx.onnx_cpp2py_export import shape_inference as c_shape_inference

import graphopt
from graphopt import api, convert
from graphopt.latency import energy
from graphopt_plugins.cleanup import Cleanup
from graphopt_plugins.fuse import Fuse
from graphopt_plugins.quantize import Quantize
from torch_models import transformer
from trait_models import dynamic_cnn


def _count_outside_passes(monkeypatch) -> collections.Counter:
    counts, inside = collections.Counter(), [0]

    def counting(name, function):
        def spy(*args, **kwargs):
            if not inside[0]:
                counts[name] += 1
            return function(*args, **kwargs)
        return spy

    def in_pass(run):
        def wrapped(self, graph, ctx):
            inside[0] += 1
            try:
                return run(self, graph, ctx)
            finally:
                inside[0] -= 1
        return wrapped

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", counting("serialise", onnx.ModelProto.SerializeToString))
    monkeypatch.setattr(onnx.checker, "check_model", counting("check", onnx.checker.check_model))
    monkeypatch.setattr(c_shape_inference, "infer_shapes", counting("infer", c_shape_inference.infer_shapes))
    monkeypatch.setattr(onnxruntime, "InferenceSession", counting("session", onnxruntime.InferenceSession))
    monkeypatch.setattr(onnx_graphsurgeon, "export_onnx", counting("export", onnx_graphsurgeon.export_onnx))
    for cls in (Cleanup, Fuse, Quantize):
        monkeypatch.setattr(cls, "run", in_pass(cls.run))
    return counts


def test_each_accepted_pass_is_serialised_once_with_weights_and_checked_once_on_placeholders(tmp_path, monkeypatch):
    path = tmp_path / "encoder.onnx"
    onnx.save_model(transformer(gelu="tanh"), str(path))  # width 32: its 4 KiB weights cross as placeholders
    counts = _count_outside_passes(monkeypatch)
    result = graphopt.optimize(str(path), passes=["cleanup", "fuse", "quantize"],
                               options={"quantize": {"mode": "dynamic", "latency": "off"}})
    accepted = sum(entry["status"] == "accepted" for entry in result.report["passes"])
    assert accepted >= 2, result.report["passes"]
    # load: the placeholder form serialised, checked and inferred once; the reference session
    # reads the file's own bytes. Each accepted pass: placeholder form + its session's proto.
    # Issue 17 adds, at load, one inference of the declared output shapes (output_annotations) and,
    # when verifying, one inference for the output slices (verify.slices.detect_slices; the input
    # is not checked again there). One graphsurgeon export per accepted pass: its check takes the
    # placeholder form from it.
    assert counts == {"serialise": 3 + 2 * accepted, "check": 1 + accepted, "infer": 3 + accepted, "session": 1 + accepted,
                      "export": accepted}


def test_with_chosen_shapes_and_the_never_slower_check_the_input_runs_once_for_both_confirmation_and_reference(
        tmp_path, monkeypatch):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(dynamic_cnn(), str(path))  # dynamic batch and image side: shapes are chosen, then confirmed
    counts = _count_outside_passes(monkeypatch)
    result = graphopt.optimize(str(path), passes=["cleanup", "fuse"])
    accepted = sum(entry["status"] == "accepted" for entry in result.report["passes"])
    assert accepted == 2 and result.report["verification"]["shapes"]["image"]["shape"] == [1, 3, 224, 224]
    assert result.report["never_slower"]["checked"] and len(result.report["never_slower"]["timings"]) == 1
    # Sessions: the run confirming the chosen shapes (on the file's bytes), whose outputs are the
    # reference's too; one per accepted pass; the never-slower check's input and output.
    # Serialised: at load the placeholder form and the declared output shapes' probe; each accepted
    # pass's placeholder form and session proto; the output slices' probe; the two timed models;
    # the MAC counts at the chosen shapes (input and output). Checked: at load and once per pass.
    # Inferred: at load (declared outputs, the input), the output slices, per pass, the two MAC counts.
    assert counts == {"session": 1 + accepted + 2, "serialise": 2 + 2 * accepted + 1 + 2 + 2, "check": 1 + accepted,
                      "infer": 2 + 1 + accepted + 2, "export": accepted}


def test_without_verification_a_pass_is_only_checked_and_the_result_exported_once(tmp_path, monkeypatch):
    path = tmp_path / "encoder.onnx"
    onnx.save_model(transformer(gelu="tanh"), str(path))
    counts = _count_outside_passes(monkeypatch)
    result = graphopt.optimize(str(path), passes=["cleanup", "fuse"], verify="off")
    accepted = sum(entry["status"] == "accepted" for entry in result.report["passes"])
    assert accepted >= 1
    # + the declared output shapes' inference at load (issue 17, output_annotations)
    # One export per accepted pass: the placeholder form, and for the last one the result it checks.
    assert counts == {"serialise": 2 + accepted, "check": 1 + accepted, "infer": 2 + accepted, "export": accepted}


def _paddle_style(width: int = 64) -> onnx.ModelProto:
    """MatMul + Relu with a dynamic batch, its weight in a Constant node as paddle2onnx keeps every weight."""
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((width, width)).astype(np.float32), "w")
    nodes = [onnx.helper.make_node("Constant", [], ["w"], value=weight), onnx.helper.make_node("MatMul", ["x", "w"], ["m"]),
             onnx.helper.make_node("Identity", ["m"], ["i"]), onnx.helper.make_node("Relu", ["i"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "paddle_style", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", width])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", width])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def test_a_summary_counts_macs_and_energy_once_at_the_shapes_it_reports(tmp_path, monkeypatch):
    path = tmp_path / "paddle_style.onnx"
    onnx.save_model(_paddle_style(), str(path))
    calls = collections.Counter()
    estimate = energy.estimate

    def counting(model, *args, **kwargs):
        calls["estimate"] += 1
        return estimate(model, *args, **kwargs)

    monkeypatch.setattr(energy, "estimate", counting)
    report = graphopt.optimize(str(path), passes=["cleanup"], verify="off").report
    # Input and output each: once, on the copy frozen at the chosen batch (not also on the dynamic model).
    assert calls == {"estimate": 2}
    for side in ("input", "output"):
        assert report[side]["macs"] == 64 * 64 and report[side]["macs_shapes"] == {"x": [1, 64]}
        assert report[side]["macs_by_dtype"]["fp32"] == 64 * 64 and report[side]["weight_bytes"] == 64 * 64 * 4


def test_no_shape_inference_gets_the_weights_of_constant_nodes(tmp_path, monkeypatch):
    path = tmp_path / "paddle_style.onnx"
    onnx.save_model(_paddle_style(), str(path))
    sizes = []
    infer = c_shape_inference.infer_shapes

    def measuring(data, *args):
        sizes.append(len(data))
        return infer(data, *args)

    monkeypatch.setattr(c_shape_inference, "infer_shapes", measuring)
    result = graphopt.optimize(str(path), passes=["cleanup"], verify="off")
    assert [entry["status"] for entry in result.report["passes"]] == ["accepted"]
    # At load: the declared output shapes, the input, its MACs at the chosen shape; then the pass's
    # check and the output's MACs. Each crosses with the 16 KiB weight as a dims-only stand-in.
    assert len(sizes) == 5 and max(sizes) < 2048, sizes


def test_the_inputs_constant_nodes_stand_in_once_for_its_output_check_its_inference_and_its_macs(tmp_path, monkeypatch):
    path = tmp_path / "paddle_style.onnx"
    onnx.save_model(_paddle_style(), str(path))
    read = collections.Counter()
    placeholders = convert.constant_placeholders

    def counting(graph):
        read[tuple(node.op_type for node in graph.node)] += 1
        return placeholders(graph)

    monkeypatch.setattr(convert, "constant_placeholders", counting)
    monkeypatch.setattr(api, "constant_placeholders", counting)
    report = graphopt.optimize(str(path), passes=["cleanup"], verify="off").report
    assert report["input"]["macs"] == 64 * 64 and report["input"]["macs_shapes"] == {"x": [1, 64]}
    # The input's nodes are read once at load (they were three times: the declared outputs'
    # inference, the input's, its MAC count); the output's once, for its MAC count.
    assert read == {("Constant", "MatMul", "Identity", "Relu"): 1, ("MatMul", "Relu"): 1}, read
