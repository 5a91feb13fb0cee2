"""How often a run crosses into ONNX's C++ side and onnxruntime: counted, so the counts cannot creep back.

Per accepted pass the pipeline exports its graph once and serialises its output once with its
weights (for the onnxruntime session that verifies it) and once in placeholder form (large
weights as dims-only inputs, taken from that export), which it checks and shape-infers once. At load the placeholder form is built, checked
and inferred once. What a pass does inside its own `run` (quantize's sensitivity sessions,
fuse's shape refreshes) is its own business and not counted here.
"""

from __future__ import annotations

import collections

import onnx
import onnx_graphsurgeon
import onnxruntime
from onnx.onnx_cpp2py_export import shape_inference as c_shape_inference

import graphopt
from graphopt_plugins.cleanup import Cleanup
from graphopt_plugins.fuse import Fuse
from graphopt_plugins.quantize import Quantize
from torch_models import transformer


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
    # when verifying, one check and inference for the output slices (verify.slices.detect_slices).
    # One graphsurgeon export per accepted pass: its check takes the placeholder form from it.
    assert counts == {"serialise": 3 + 2 * accepted, "check": 2 + accepted, "infer": 3 + accepted, "session": 1 + accepted,
                      "export": accepted}


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
