"""Localisation compares only tensors whose meaning survived the rewrite (graphopt/verify/localize.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main
from graphopt.verify.localize import anchored_tensors, first_divergence

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
W2 = RNG.standard_normal((4, 8, 3, 3)).astype(np.float32)
SAMPLE = {"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)}


def chain(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x → Conv(w1) → a → Relu → b → Conv(w2) → y, names kept whatever the weights."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["b"], name="relu"),
         helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])],
        "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def test_a_rescaled_tensor_is_not_anchored_and_a_lossless_fold_reports_nothing():
    reference = chain(W1, W2)
    folded = chain(W1 * 4.0, W2 / 4.0)  # a and b are 4x larger; y is the same
    assert anchored_tensors(reference, folded) == {"y"}
    assert first_divergence(reference, folded, SAMPLE, budget=None) is None


def test_the_real_divergence_is_named_not_the_rescaled_tensor_before_it():
    reference = chain(W1, W2)
    broken = chain(W1 * 4.0, W2 / 4.0 * 1.1)  # rescaled upstream (fine), then really wrong
    found = first_divergence(reference, broken, SAMPLE, budget=None)
    assert found["node"] == "conv2" and found["tensor"] == "y"


def test_an_upstream_divergence_is_found_through_unchanged_readers():
    reference = chain(W1, W2)
    broken = chain(W1 * 1.1, W2)  # conv1 is wrong; relu and conv2 read a and b as before
    assert anchored_tensors(reference, broken) == {"a", "b", "y"}
    assert first_divergence(reference, broken, SAMPLE, budget=None)["node"] == "conv1"


def test_verify_command_names_the_first_really_divergent_node(tmp_path, capsys):
    reference, candidate = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    onnx.save(chain(W1, W2), reference)
    onnx.save(chain(W1 * 4.0, W2 / 4.0 * 1.1), candidate)
    assert main(["verify", str(reference), str(candidate)]) == 1
    out = capsys.readouterr().out
    assert "first divergence: node 'conv2'" in out
