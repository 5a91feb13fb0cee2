"""graphopt_plugins/fp16: float16 conversion on tiny graphs and torch models, checked in onnxruntime."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch_models
import trait_models
from onnx import helper, numpy_helper

import graphopt

F16 = onnx.TensorProto.FLOAT16


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _fp16(model, input_shapes=None, **options):
    result = graphopt.optimize(model, passes=["fp16"], options={"fp16": options} if options else None, input_shapes=input_shapes)
    onnx.checker.check_model(result.model, full_check=True)
    return result, result.report["passes"][0]


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    found = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    found.update({t.name: t.data_type for t in inferred.graph.initializer})
    return found


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32) * 0.3, "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_small_mlp_computes_in_float16_behind_float32_boundaries_and_is_idempotent():
    model = _mlp()
    result, entry = _fp16(model)
    assert entry["status"] == "accepted" and entry["details"]["converted_nodes"] == 3
    converted = result.model
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(t.data_type == F16 for t in converted.graph.initializer)
    assert _ops(converted)["Cast"] == 2  # one in after x, one out before y
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    assert _cos(_run(model, {"x": x})[0], _run(converted, {"x": x})[0]) >= 0.999
    again, second = _fp16(converted)
    assert second["status"] == "unchanged" and second["details"] == {"already_float16": True}


def test_resize_scales_stay_float32_while_its_data_turns_float16():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 2, 4, 4] x) => (float[1, 2, 8, 8] y) {
            s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
            r = Relu(x)
            u = Resize<mode = "nearest">(r, , s)
            y = Sigmoid(u)
        }''')
    result, entry = _fp16(model)
    types = _types(result.model)
    resize = next(n for n in result.model.graph.node if n.op_type == "Resize")
    assert types[resize.input[0]] == F16 and types[resize.output[0]] == F16
    assert types[resize.input[2]] == onnx.TensorProto.FLOAT
    x = np.random.default_rng(2).standard_normal((1, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0], atol=2e-3)


def test_blocked_ops_stay_float32_with_casts_around_them():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 64] x) => (float[3, 1] total, float[3, 2] best) {
            k = Constant<value = int64[1] {2}>()
            axes = Constant<value = int64[1] {1}>()
            e = Exp(x)
            total = ReduceSum<keepdims = 1>(e, axes)
            best, where = TopK(e, k)
        }''')
    result, entry = _fp16(model)
    types = _types(result.model)
    for op in ("ReduceSum", "TopK"):
        node = next(n for n in result.model.graph.node if n.op_type == op)
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, op
    exp = next(n for n in result.model.graph.node if n.op_type == "Exp")
    assert types[exp.output[0]] == F16
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    for got, want in zip(_run(result.model, {"x": x}), _run(model, {"x": x})):
        assert _cos(got, want) >= 0.9999


def test_weights_beyond_float16_range_are_clamped_not_infinite():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) {
            big = Constant<value = float[4] {1e6, 2e6, 3.0, 1e6}>()
            m = Min(x, big)
            y = Abs(m)
        }''')
    result, entry = _fp16(model)
    assert entry["details"]["clamped_values"] == 3
    values = [numpy_helper.to_array(t) for t in result.model.graph.initializer]
    values += [numpy_helper.to_array(a.t) for n in result.model.graph.node if n.op_type == "Constant" for a in n.attribute]
    halves = [v for v in values if v.dtype == np.float16]
    assert halves and all(np.isfinite(v).all() and np.abs(v).max() <= 65504 for v in halves)
    x = np.array([1.0, -2.0, 5.0, 0.5], np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], np.abs(np.minimum(x, [1e6, 2e6, 3.0, 1e6])), rtol=1e-3)


def test_a_cast_to_float_feeding_a_float16_reader_becomes_one_cast():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (int64[6] ids, float[6] x) => (float[6] y) {
            f = Cast<to = 1>(ids)
            s = Add(f, x)
            y = Tanh(s)
        }''')
    result, entry = _fp16(model)
    assert entry["details"]["cast_chains_folded"] == 1
    producers = {out: n for n in result.model.graph.node for out in n.output}
    for node in result.model.graph.node:
        if node.op_type == "Cast":
            feeding = producers.get(node.input[0])
            assert feeding is None or feeding.op_type != "Cast", "a Cast still reads a Cast"
    feeds = {"ids": np.arange(6, dtype=np.int64), "x": np.linspace(-1, 1, 6, dtype=np.float32)}
    np.testing.assert_allclose(_run(result.model, feeds)[0], _run(model, feeds)[0], atol=2e-3)


def test_if_bodies_are_converted_inside_their_float32_interface():
    model = trait_models.if_with_weights(width=16)
    result, entry = _fp16(model, input_shapes={"x": (2, 16)})
    node = next(n for n in result.model.graph.node if n.op_type == "If")
    for attribute in node.attribute:
        assert all(t.data_type == F16 for t in attribute.g.initializer), attribute.name
        assert attribute.g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for flag in (True, False):
        feeds = trait_models.if_feeds(width=16, flag=flag)
        assert _cos(_run(result.model, feeds)[0], _run(model, feeds)[0]) >= 0.999


def test_loop_bodies_are_converted_consistently():
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32) * 0.4, "w_body")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["v_in", "w_body"], ["mm"]), helper.make_node("Tanh", ["mm"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", onnx.TensorProto.FLOAT, [1, 8])], [w])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["start"]), helper.make_node("Loop", ["trips", "", "start"], ["final"], body=body),
         helper.make_node("Sigmoid", ["final"], ["y"])],
        "loop", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result, entry = _fp16(model)
    loop = next(n for n in result.model.graph.node if n.op_type == "Loop")
    assert loop.attribute[0].g.initializer[0].data_type == F16
    x = rng.standard_normal((1, 8)).astype(np.float32)
    assert _cos(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0]) >= 0.999


def _overflowing() -> onnx.ModelProto:
    """x*300 squared overflows float16 (90000 x² > 65504); the rest is harmless."""
    return onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[8] x) => (float[8] y) {
            c = Constant<value = float {300.0}>()
            d = Constant<value = float {100000.0}>()
            a = Mul(x, c)
            b = Mul(a, a)
            s = Div(b, d)
            t = Relu(s)
            y = Tanh(t)
        }''')


def test_auto_keeps_the_overflowing_nodes_float32_and_converts_the_rest():
    model = _overflowing()
    result, entry = _fp16(model)
    details = entry["details"]
    assert entry["status"] == "accepted" and details["kept_float32"] and details["cosine"] >= 0.999
    assert details["converted_nodes"] >= 1 and details["sensitivity_evaluations"] >= 1
    x = np.linspace(-1.5, 1.5, 8, dtype=np.float32)
    assert _cos(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0]) >= 0.999


def test_without_auto_a_conversion_missing_the_budget_changes_nothing():
    result, entry = _fp16(_overflowing(), auto=False)
    assert entry["status"] == "unchanged" and "misses cos=0.999" in entry["details"]["reason"]


@pytest.mark.parametrize("build, feeds", [(lambda: torch_models.cnn("torchscript", 17), torch_models.cnn_feeds),
                                          (lambda: torch_models.transformer("torchscript", 17), torch_models.transformer_feeds)])
def test_torch_models_halve_their_weights_at_cosine_0_999(build, feeds):
    model = build()
    result = graphopt.optimize(model, passes=["cleanup", "fuse", "fp16"])
    onnx.checker.check_model(result.model, full_check=True)
    before = graphopt.optimize(model, passes=["cleanup", "fuse"]).report["output"]
    after = result.report["output"]
    assert after["weight_bytes"] <= 0.51 * before["weight_bytes"]
    assert after["macs_by_dtype"]["fp16"] == before["macs_by_dtype"]["fp32"] and after["macs_by_dtype"]["fp32"] == 0
    sample = feeds(seed=11)
    assert _cos(_run(result.model, sample)[0], _run(model, sample)[0]) >= 0.999


def test_the_conversion_adds_no_name_bytes_only_its_boundary_casts():
    model = torch_models.cnn("torchscript", 17)
    base = graphopt.optimize(model, passes=["cleanup", "fuse"]).model
    result, entry = _fp16(base)
    converted = result.model
    names = lambda m: {n for node in m.graph.node for n in list(node.input) + list(node.output)} | {t.name for t in m.graph.initializer}
    casts = [node for node in converted.graph.node if node.op_type == "Cast"]
    assert len(casts) == 2 and names(converted) == names(base) | {n for node in casts for n in list(node.input) + list(node.output)}
    float_bytes = sum(len(t.raw_data) for t in base.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    structure = base.ByteSize() - float_bytes
    cast_bytes = sum(node.ByteSize() + 2 for node in casts)
    assert converted.ByteSize() <= float_bytes / 2 + structure + cast_bytes + 2 * len(converted.graph.initializer)


def test_a_kept_nodes_exact_weight_is_stored_float16_behind_one_cast():
    exact = np.arange(64, dtype=np.float32).reshape(8, 8) / 4  # float16 holds every value
    inexact = (np.arange(64, dtype=np.float32).reshape(8, 8) + 1) / 3
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "we"], ["a"], name="kept_exact"), helper.make_node("MatMul", ["a", "wi"], ["b"], name="kept_inexact"),
         helper.make_node("Relu", ["b"], ["y"])],
        "kept", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(exact, "we"), numpy_helper.from_array(inexact, "wi")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result, entry = _fp16(model, keep=["kept_*"])
    assert entry["details"]["weights_stored_half"] == 1
    stored = {t.name: t.data_type for t in result.model.graph.initializer}
    assert stored == {"we": F16, "wi": onnx.TensorProto.FLOAT}  # the float16 copy took the weight's name
    matmul = next(n for n in result.model.graph.node if n.name == "kept_exact")
    cast = next(n for n in result.model.graph.node if matmul.input[1] in n.output)
    assert cast.op_type == "Cast" and cast.input[0] == "we" and _types(result.model)[matmul.input[1]] == onnx.TensorProto.FLOAT
    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6, atol=1e-5)
