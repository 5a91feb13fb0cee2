"""graphopt/verify/tensor_errors.py: per-tensor SQNR/cosine between a float model and its quantized form."""

from __future__ import annotations

import numpy as np
from quantize_support import calibration_for, quantize, single_op_model
from onnx import TensorProto, helper, numpy_helper

from graphopt.verify.tensor_errors import per_tensor_errors, shared_tensors


def _two_layers(noisy_second: bool = False):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 16)).astype(np.float32)
    if noisy_second:
        w2 = w2 + rng.standard_normal(w2.shape).astype(np.float32) * 0.5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_tensor_where_the_error_starts_comes_first():
    reference, candidate = _two_layers(), _two_layers(noisy_second=True)
    samples = {"x": np.random.default_rng(1).standard_normal((3, 4, 16)).astype(np.float32)}
    rows = per_tensor_errors(reference, candidate, samples)
    assert [row["tensor"] for row in rows][0] == "y"
    exact = {row["tensor"]: row for row in rows}
    assert exact["h"]["cosine"] > 0.999999 and exact["r"]["sqnr_db"] == float("inf")
    assert exact["y"]["cosine"] < 0.99


def test_a_quantized_model_shares_its_tensors_by_name():
    model = single_op_model("Conv", relu=True)
    quantized, _, _ = quantize(model, calibration_for(model), mode="static", latency="off")
    assert "y" in shared_tensors(model, quantized)
    rows = per_tensor_errors(model, quantized, calibration_for(model, samples=2, seed=5))
    assert rows and all(row["sqnr_db"] > 20 for row in rows), rows


def test_cli_verify_per_tensor_lists_the_worst_first(tmp_path, capsys):
    import json

    import onnx

    from graphopt.cli import main

    onnx.save(_two_layers(), tmp_path / "ref.onnx")
    onnx.save(_two_layers(noisy_second=True), tmp_path / "cand.onnx")
    code = main(["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "cand.onnx"), "--per-tensor", "--json",
                 "--budget", "cos=0.5"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and [row["tensor"] for row in report["per_tensor"]][0] == "y"
    code = main(["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "cand.onnx"), "--per-tensor", "--budget", "cos=0.5"])
    assert "tensor y: SQNR" in capsys.readouterr().out.splitlines()[1]
