"""graphopt_plugins/opset: a model converted to a newer opset computes the same, and unlocks newer fusions."""

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

import graphopt

# Opset 11 spells Clip's bounds as inputs and Split's sizes as an attribute; at 18 ReduceMean's
# axes become an input: each conversion must keep the function the same.
OLD_MODEL = """
<ir_version: 7, opset_import: ["" : 11]>
g (float[2, 4, 8] x) => (float[2, 4, 8] y, float[2, 4, 3] a) {
    lo = Constant<value = float {0.0}>()
    hi = Constant<value = float {6.0}>()
    c = Clip(x, lo, hi)
    m = ReduceMean<axes = [-1]>(c)
    d = Sub(c, m)
    y = Relu(d)
    a, b = Split<axis = 2, split = [3, 5]>(y)
}"""


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _opset(model) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def test_converts_and_computes_the_same():
    model = onnx.parser.parse_model(OLD_MODEL)
    result = graphopt.optimize(model, passes=["opset"], options={"opset": {"target": 18}})
    entry = result.report["passes"][0]
    assert entry["status"] == "accepted" and entry["details"] == {"from": 11, "to": 18}
    assert _opset(result.model) == 18
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(0).uniform(-3, 9, (2, 4, 8)).astype(np.float32)
    for expected, actual in zip(_run(model, x), _run(result.model, x), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
    again = graphopt.optimize(result.model, passes=["opset"], options={"opset": {"target": 18}})
    assert again.report["passes"][0]["status"] == "unchanged"


def test_never_lowers():
    model = onnx.parser.parse_model(OLD_MODEL)
    converted = graphopt.optimize(model, passes=["opset"], options={"opset": {"target": 17}}).model
    result = graphopt.optimize(converted, passes=["opset"], options={"opset": {"target": 13}})
    assert result.report["passes"][0]["status"] == "unchanged"
    assert _opset(result.model) == 17


def test_it_unlocks_layer_normalization_for_fuse():
    model = onnx.parser.parse_model("""
        <ir_version: 7, opset_import: ["" : 12]>
        g (float[2, 5, 16] x) => (float[2, 5, 16] y) {
            m = ReduceMean<axes = [-1]>(x)
            d = Sub(x, m)
            two = Constant<value = float {2.0}>()
            p = Pow(d, two)
            v = ReduceMean<axes = [-1]>(p)
            eps = Constant<value = float {1e-5}>()
            s = Add(v, eps)
            r = Sqrt(s)
            y = Div(d, r)
        }""")
    alone = graphopt.optimize(model, passes=["cleanup", "fuse"])
    assert "LayerNormalization" not in {node.op_type for node in alone.model.graph.node}
    upgraded = graphopt.optimize(model, passes=["opset", "cleanup", "fuse"])
    assert [node.op_type for node in upgraded.model.graph.node] == ["LayerNormalization"]
    assert upgraded.report["verification"]["end_to_end"]["ok"]


def test_a_target_out_of_range_is_bad_usage():
    model = onnx.parser.parse_model(OLD_MODEL)
    with pytest.raises(graphopt.UsageError, match="target"):
        graphopt.optimize(model, passes=["opset"], options={"opset": {"target": 99}})


def _opset6_cnn() -> onnx.ModelProto:
    """An opset-6, IR-3 CNN as 2017-era exporters wrote it: initializers are graph inputs too."""
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    bias = onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [onnx.helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", ["c"], ["r"]),
             onnx.helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        nodes, "old", [value("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16]), value("w", onnx.TensorProto.FLOAT, [8, 3, 3, 3]),
                       value("b", onnx.TensorProto.FLOAT, [8])],
        [value("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])], [weight, bias])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 6)], ir_version=3)


def test_an_opset_6_model_is_converted_and_quantized():
    # onnx's converter reads opsets below 7 (onnxruntime runs none newer than it must): a
    # first-try `quantize` on a 2017-era export is converted, not refused.
    model = _opset6_cnn()
    result = graphopt.optimize(model, passes=["quantize"], options={"quantize": {"latency": "off", "mode": "static"}})
    assert _opset(result.model) >= 13
    assert any(node.op_type == "DequantizeLinear" for node in result.model.graph.node)
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected, got = _run(model, x)[0], _run(result.model, x)[0]
    cosine = float(np.dot(expected.ravel(), got.ravel()) / (np.linalg.norm(expected) * np.linalg.norm(got)))
    assert cosine > 0.99
