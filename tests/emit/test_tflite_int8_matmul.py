"""graphopt/emit/tflite_int8_matmul.py: BATCH_MATMUL's constant operand per tensor, as LiteRT's int8 kernel reads it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.verify.runner import make_session


def ctc_head(classes: int = 50) -> onnx.ModelProto:
    """features (1, 8, 1, 10) -> Squeeze(H) -> Transpose to (1, 10, 8) -> MatMul (8, classes) + bias -> Softmax.

    PP-OCRv4 rec's CTC head: onnx2tf writes the MatMul as BATCH_MATMUL (adj_x) with a per-channel weight.
    """
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, (8, classes)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(0, 0.1, classes).astype(np.float32), "b"),
               numpy_helper.from_array(np.array([2], np.int64), "axes")]
    nodes = [helper.make_node("Squeeze", ["features", "axes"], ["squeezed"]),
             helper.make_node("Transpose", ["squeezed"], ["steps"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["steps", "w"], ["scores"]),
             helper.make_node("Add", ["scores", "b"], ["biased"]),
             helper.make_node("Softmax", ["biased"], ["probs"], axis=2)]
    graph = helper.make_graph(nodes, "ctc_head", [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [1, 8, 1, 10])],
                              [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, [1, 10, classes])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_ctc_head_in_int8_computes_its_softmax_with_the_matmul_weight_per_tensor():
    from ai_edge_litert.interpreter import Interpreter

    from graphopt.emit.tflite import convert_to_tflite, restore_layout, run_tflite
    from graphopt.emit.tflite_int8_matmul import per_tensor_matmul_constants

    model = ctc_head()
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (16, 1, 8, 1, 10)).astype(np.float32)
    emitted = convert_to_tflite(model, "int8", {"features": features[:12]})
    assert emitted.rewritten["batch_matmul_constants_per_tensor"] == 1
    interpreter = Interpreter(model_content=emitted.flatbuffer)
    matmul = [op for op in interpreter._get_ops_details() if op["op_name"] == "BATCH_MATMUL"]
    assert matmul
    weight = interpreter._get_tensor_details(int(matmul[0]["inputs"][1]), 0)
    assert len(weight["quantization_parameters"]["scales"]) == 1 and weight["dtype"] == np.int8
    samples = [{"features": f} for f in features[12:]]
    expected = [{"probs": make_session(model).run(["probs"], s)[0]} for s in samples]
    got, _ = restore_layout(run_tflite(emitted.flatbuffer, samples, model)[0], expected)
    assert _cosine([g["probs"] for g in got], [e["probs"] for e in expected]) >= 0.99
    # as onnx2tf writes it (a scale per row of the weight) the output multiplier is 0: every output the zero point, cosine 0.44
    again, count = per_tensor_matmul_constants(emitted.flatbuffer)
    assert count == 0 and again == emitted.flatbuffer  # idempotent
