"""A model that computes in float16 is held to float16's lossless tolerance, even where its outputs are float32."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt.cli import main
from graphopt.verify import Verifier, lossless_floor
from graphopt.verify.precision import float_types
from trait_models import dynamic_transformer


def _half_inside() -> onnx.ModelProto:
    """x (float32) -> Cast to float16 -> Relu -> Cast back: float32 at the interface, half inside."""
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_float_types_a_model_holds_include_its_casts():
    assert float_types(_half_inside()) == {TensorProto.FLOAT, TensorProto.FLOAT16}


def test_a_float32_output_of_a_half_model_may_move_by_half_ulps():
    reference = [{"y": np.array([2.0, 3.0, -1.0, 0.5], np.float32)}]
    candidate = [{"y": np.array([2.0039, 3.0, -1.0, 0.5], np.float32)}]  # two float16 ulps at 2
    samples = [{"x": np.zeros(4, np.float32)}]
    assert not Verifier(samples).judge(reference, candidate, budget=None).ok
    assert Verifier(samples, precision=lossless_floor(_half_inside())).judge(reference, candidate, budget=None).ok
    far = [{"y": np.array([2.1, 3.0, -1.0, 0.5], np.float32)}]  # still no licence for a real change
    assert not Verifier(samples, precision=lossless_floor(_half_inside())).judge(reference, far, budget=None).ok


def test_fuse_on_a_float16_encoder_is_verified_at_half_precision(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(dynamic_transformer(), path)
    assert main(["optimize", str(path), "--passes", "fp16", "-o", str(tmp_path / "half.onnx"), "--quiet"]) == 0
    assert main(["optimize", str(tmp_path / "half.onnx"), "--passes", "fuse", "-o", str(tmp_path / "fused.onnx"),
                 "--report", str(tmp_path / "r.json")]) == 0
    assert "pass fuse: accepted" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(tmp_path / "fused.onnx"), full_check=True)
