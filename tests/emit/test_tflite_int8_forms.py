"""graphopt/emit/tflite_int8_forms.py and tflite_int8_qparams.py: models onnx2tf's int8 writer gets wrong, made right."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import graphopt
import graphopt.emit.tflite
from graphopt.emit.tflite_int8_forms import int8_friendly
from graphopt.errors import VerificationError


def _weights(seed: int, **shapes) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    return [numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name) for name, (shape, scale) in shapes.items()]


def _squeeze_excite() -> onnx.ModelProto:
    """Conv → Relu → x * HardSigmoid(Conv(Relu(Conv(GlobalAveragePool(x))))) → Conv, as MobileNetV3 blocks are."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("GlobalAveragePool", ["r0"], ["m"]),
             helper.make_node("Conv", ["m", "w1"], ["s1"]), helper.make_node("Relu", ["s1"], ["s2"]),
             helper.make_node("Conv", ["s2", "w2"], ["s3"]), helper.make_node("HardSigmoid", ["s3"], ["gate"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["r0", "gate"], ["y0"]), helper.make_node("Conv", ["y0", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
                              _weights(0, w0=((16, 8, 3, 3), 0.5), w1=((4, 16, 1, 1), 0.5), w2=((16, 4, 1, 1), 0.5), w3=((4, 16, 1, 1), 0.3)))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _upsample_concat() -> onnx.ModelProto:
    """A feature-pyramid join: a small-range branch upsampled (Resize nearest) and concatenated with a wide-range one."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["small"], strides=[2, 2]), helper.make_node("Add", ["small", "bias"], ["small_b"]),
             helper.make_node("Resize", ["small_b", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Conv", ["x", "w1"], ["wide"]), helper.make_node("Concat", ["up", "wide"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"])]
    weights = _weights(0, w0=((4, 4, 1, 1), 0.2), bias=((1, 4, 1, 1), 0.1), w1=((4, 4, 1, 1), 20.0), w2=((4, 8, 1, 1), 0.3))
    weights.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    graph = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 16, 16])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _emit_int8(model: onnx.ModelProto, tmp_path) -> dict:
    source = tmp_path / "model.onnx"
    onnx.save(model, source)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    data = rng.standard_normal((20, *shape)).astype(np.float32)
    return graphopt.optimize_to_file(str(source), tmp_path / "model.tflite", passes=["cleanup"], emit="tflite", emit_precision="int8",
                                     calibration={"x": data[:16]}, inputs={"x": data[16:]})["emit"]


def test_a_squeeze_excite_mean_keeps_its_input_unclipped_in_int8(tmp_path, monkeypatch):
    emitted = _emit_int8(_squeeze_excite(), tmp_path)
    assert emitted["rewritten_for_converter"] == {"GlobalAveragePool": 1, "HardSigmoid": 1}
    assert emitted["verification"]["outputs"]["y"]["cosine"] >= 0.999
    # handed over as MEAN, onnx2tf gives the mean's input the mean's narrow range, and the gate multiplies clipped values
    monkeypatch.setattr("graphopt.emit.tflite_int8_forms._static_shapes", lambda model: {})
    with pytest.raises(VerificationError, match="cosine"):
        _emit_int8(_squeeze_excite(), tmp_path)


def test_the_fully_connected_mean_is_the_same_function_and_takes_a_flatten_after_it():
    model = _squeeze_excite()
    head = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["m"]), helper.make_node("Flatten", ["m"], ["y"])], "head",
                             [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8, 5, 3])],
                             [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])])
    for source, output in ((model, "y"), (helper.make_model(head, opset_imports=[helper.make_opsetid("", 13)]), "y")):
        rewritten, counts = int8_friendly(source)
        onnx.checker.check_model(rewritten, full_check=True)
        ops = [n.op_type for n in rewritten.graph.node]
        assert counts["GlobalAveragePool"] == 1 and "GlobalAveragePool" not in ops and "Gemm" in ops
        shape = [d.dim_value for d in source.graph.input[0].type.tensor_type.shape.dim]
        feed = {"x": np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
        run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run([output], feed)[0]
        np.testing.assert_allclose(run(rewritten), run(source), rtol=1e-5, atol=1e-6)
    assert ops == ["Reshape", "Gemm", "Reshape"]  # the Flatten is written by the last Reshape


def test_ops_that_cannot_rescale_get_their_outputs_quantization_on_their_input(tmp_path, monkeypatch):
    emitted = _emit_int8(_upsample_concat(), tmp_path)
    assert emitted["rewritten_for_converter"] == {"passthrough_quantization_aligned": 1}
    assert emitted["verification"]["outputs"]["y"]["cosine"] >= 0.999
    # as onnx2tf writes it, the TRANSPOSE before the Concat rescales, which LiteRT's int8 kernels cannot
    monkeypatch.setattr(graphopt.emit.tflite, "reconcile_passthrough_qparams", lambda data: (data, 0))
    with pytest.raises(VerificationError, match="cosine"):
        _emit_int8(_upsample_concat(), tmp_path)


def test_int8_weights_are_per_channel_with_each_bias_quantized_along_its_only_axis(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    _emit_int8(_squeeze_excite(), tmp_path)
    details = Interpreter(model_path=str(tmp_path / "model.tflite")).get_tensor_details()
    per_channel = [d for d in details if len(d["quantization_parameters"]["scales"]) > 1]
    assert any(d["dtype"] == np.int8 and len(d["shape"]) == 4 for d in per_channel)
    assert all(d["quantization_parameters"]["quantized_dimension"] == 0 for d in per_channel if len(d["shape"]) == 1)
