"""Constant folding (graphopt_plugins/cleanup/folding.py, fold_numpy.py, fold_onnxruntime.py, fold_shapes.py).

Which evaluator folds a node is observed by wrapping the two evaluators; every folded value is
compared *exactly* with what onnxruntime computes on the original model, since folding must give
the runtime's own bits (numpy may only take the cases where it agrees with them).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

import graphopt
from graphopt_plugins.cleanup import folding

_HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _model(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(_HEADER + text)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds or {})


@pytest.fixture
def evaluated(monkeypatch):
    """{"numpy": [op, ...], "onnxruntime": [[op, ...] per session]}: what each evaluator was given."""
    seen = {"numpy": [], "onnxruntime": []}
    numpy_evaluator, ort_evaluator = folding.evaluate_with_numpy, folding.evaluate_with_onnxruntime

    def by_numpy(node, inputs):
        values = numpy_evaluator(node, inputs)
        if values is not None:
            seen["numpy"].append(node.op)
        return values

    def by_onnxruntime(nodes, opsets):
        seen["onnxruntime"].append([node.op for node in nodes])
        return ort_evaluator(nodes, opsets)

    monkeypatch.setattr(folding, "evaluate_with_numpy", by_numpy)
    monkeypatch.setattr(folding, "evaluate_with_onnxruntime", by_onnxruntime)
    return seen


def _cleanup(model: onnx.ModelProto, options: dict | None = None, feeds: dict | None = None):
    """(cleaned model, stats) after checking validity, exact equality with ORT and idempotence."""
    result = graphopt.optimize(model, passes=["cleanup"], options=options, verify="off")
    cleaned = result.model
    onnx.checker.check_model(cleaned, full_check=True)
    for want, got in zip(_run(model, feeds), _run(cleaned, feeds)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    again = graphopt.optimize(cleaned, passes=["cleanup"], options=options, verify="off")
    assert again.report["passes"][0]["changed"] is False
    return cleaned, result.report["passes"][0]["details"]


# Each numpy evaluator on the corners where numpy's own semantics differ from ONNX's.
NUMPY_CASES = {
    "int_div_truncates": ("int64[4] y", "<int64[4] a = {7, -7, 7, -7}, int64[4] b = {2, 2, -2, -2}>", "y = Div (a, b)"),
    "float_div": ("float[3] y", "<float[3] a = {1, -1, 3}, float[3] b = {3, 7, 0.1}>", "y = Div (a, b)"),
    "sub_broadcast": ("float[2,3] y", "<float[2,1] a = {1, 2}, float[3] b = {0.5, 0.25, 0.125}>", "y = Sub (a, b)"),
    "mul_int32_wraps": ("int32[1] y", "<int32[1] a = {2000000000}, int32[1] b = {3}>", "y = Mul (a, b)"),
    "slice_negative_step_to_start": (
        "int64[4] y",
        "<int64[5] a = {0, 1, 2, 3, 4}, int64[1] s = {-2}, int64[1] e = {-100}, int64[1] ax = {0}, int64[1] st = {-1}>",
        "y = Slice (a, s, e, ax, st)",
    ),
    "slice_steps_of_two": (
        "int64[2,2] y",
        "<int64[3,4] a = {0,1,2,3,4,5,6,7,8,9,10,11}, int64[2] s = {0, 1}, int64[2] e = {9, 100}, int64[2] ax = {0, 1}, int64[2] st = {2, 2}>",
        "y = Slice (a, s, e, ax, st)",
    ),
    "gather_negative_index": ("int64[2] y", "<int64[4] a = {5, 6, 7, 8}, int64[2] i = {-1, 0}>", "y = Gather (a, i)"),
    "gather_axis_1": ("float[2,1] y", "<float[2,3] a = {1, 2, 3, 4, 5, 6}, int64[1] i = {2}>", "y = Gather <axis = 1> (a, i)"),
    "cast_float_to_int_truncates": ("int32[4] y", "<float[4] a = {1.9, -1.9, 0.5, -0.5}>", "y = Cast <to = 6> (a)"),
    "cast_int_to_float": ("float[2] y", "<int64[2] a = {16777217, -3}>", "y = Cast <to = 1> (a)"),
    "reshape_zero_and_minus_one": ("float[2,3,1] y", "<float[2,3] a = {1, 2, 3, 4, 5, 6}, int64[3] s = {0, -1, 1}>", "y = Reshape (a, s)"),
    "squeeze_without_axes": ("float[3] y", "<float[1,3,1] a = {1, 2, 3}>", "y = Squeeze (a)"),
    "unsqueeze_negative_axes": ("float[3,1,1] y", "<float[3] a = {1, 2, 3}, int64[2] ax = {-1, 1}>", "y = Unsqueeze (a, ax)"),
    "concat": ("int64[3] y", "<int64[1] a = {4}, int64[2] b = {-1, 7}>", "y = Concat <axis = 0> (a, b)"),
    "range_int": ("int64[4] y", "<int64 a = {10}, int64 b = {2}, int64 d = {-2}>", "y = Range (a, b, d)"),
    "transpose": ("float[3,2] y", "<float[2,3] a = {1, 2, 3, 4, 5, 6}>", "y = Transpose <perm = [1, 0]> (a)"),
    "expand": ("float[2,3] y", "<float[3] a = {1, 2, 3}, int64[2] s = {2, 1}>", "y = Expand (a, s)"),
    "constant_of_shape": ("int32[2,2] y", "<int64[2] s = {2, 2}>", "y = ConstantOfShape <value = int32[1] {7}> (s)"),
    "where_equal": ("float[3] y", "<int64[3] a = {1, 2, 3}, int64[3] b = {1, 0, 3}, float[3] t = {1, 2, 3}, float[3] f = {-1, -2, -3}>", "q = Equal (a, b)\n y = Where (q, t, f)"),
    "neg_flatten": ("float[2,3] y", "<float[2,1,3] a = {1, 2, 3, 4, 5, 6}>", "n = Neg (a)\n y = Flatten (n)"),
    "constant_node_and_size": ("int64 y", "", 'c = Constant <value_ints = [1, 2, 3]> ()\n y = Size (c)'),
}


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_numpy_evaluator_folds_exactly_as_onnxruntime_computes(case, evaluated):
    output, initializers, body = NUMPY_CASES[case]
    model = _model(f"g () => ({output}) {initializers} {{\n {body}\n }}")
    cleaned, stats = _cleanup(model)
    assert [node.op_type for node in cleaned.graph.node] == []
    assert stats["constants_folded"] == len(model.graph.node)
    assert evaluated["onnxruntime"] == [] and len(evaluated["numpy"]) == len(model.graph.node)


def test_ops_numpy_does_not_cover_fold_in_one_onnxruntime_session(evaluated):
    """Sin and a float16 Add (numpy leaves float16 to the runtime), and the Cos reading the Sin."""
    model = _model("""
        g (float[3] x) => (float[3] y, float16[2] z)
        <float[3] a = {0.1, 0.2, 0.3}, float[2] f = {1.5, 2.25}> {
            s = Sin (a)
            c = Cos (s)
            y = Mul (x, c)
            h = Cast <to = 10> (f)
            z = Add (h, h)
        }""")
    cleaned, stats = _cleanup(model, feeds={"x": np.array([1, 2, 3], np.float32)})
    assert [node.op_type for node in cleaned.graph.node] == ["Mul"]
    assert stats["constants_folded"] == 4
    assert evaluated["onnxruntime"] == [["Sin", "Cos", "Cast", "Add"]]


def test_numpy_evaluator_continues_a_chain_the_runtime_started_next_round(evaluated):
    """A cheap op reading an onnxruntime result joins that session rather than waiting a round."""
    model = _model("""
        g () => (float[3] y) <float[3] a = {0.1, 0.2, 0.3}, float[3] b = {1, 2, 3}> {
            s = Sin (a)
            y = Add (s, b)
        }""")
    cleaned, _ = _cleanup(model)
    assert [node.op_type for node in cleaned.graph.node] == []
    assert evaluated["onnxruntime"][0] == ["Sin", "Add"]


def test_shape_of_a_static_input_folds_without_any_evaluator(evaluated):
    model = _model("""
        g (float[2,5] x) => (float[10] y) <int64[1] minus_one = {-1}> {
            s = Shape (x)
            n = ReduceProd <keepdims = 1> (s)
            y = Reshape (x, n)
        }""")
    cleaned, _ = _cleanup(model, feeds={"x": np.arange(10, dtype=np.float32).reshape(2, 5)})
    assert [node.op_type for node in cleaned.graph.node] == ["Reshape"]
    assert evaluated["numpy"] == [] and evaluated["onnxruntime"] == [["ReduceProd"]]


def test_a_node_the_runtime_rejects_is_kept_and_the_rest_of_its_batch_still_folds(evaluated):
    """Gather out of range: numpy declines it, onnxruntime fails on it, Sin beside it still folds."""
    model = _model("""
        g (float[1] x) => (float[1] y, float[1] z) <float[3] a = {1, 2, 3}, int64[1] i = {5}, float[1] b = {0.5}> {
            g1 = Gather (a, i)
            y = Add (x, g1)
            s = Sin (b)
            z = Add (x, s)
        }""")
    result = graphopt.optimize(model, passes=["cleanup"], verify="off")
    ops = [node.op_type for node in result.model.graph.node]
    assert ops.count("Gather") == 1 and "Sin" not in ops
    assert evaluated["onnxruntime"][0] == ["Gather", "Sin"]


def test_expand_over_the_growth_limit_is_refused_before_it_is_evaluated(evaluated):
    """Its shape comes from a Concat folded in the same sweep; the 8 MiB value is never built."""
    model = _model("""
        g (float[1,1] x) => (float[2048,1024] y) <float[1] one = {1.5}, int64[1] rows = {2048}, int64[1] cols = {1024}> {
            shape = Concat <axis = 0> (rows, cols)
            big = Expand (one, shape)
            y = Add (x, big)
        }""")
    cleaned, stats = _cleanup(model, feeds={"x": np.ones((1, 1), np.float32)})
    assert [node.op_type for node in cleaned.graph.node] == ["Expand", "Add"]
    assert evaluated["numpy"] == ["Concat"] and evaluated["onnxruntime"] == []
    assert cleaned.ByteSize() < 4096


def test_runtime_result_over_the_growth_limit_is_not_kept():
    """An outer product MatMul: 16 KiB in, 16 MiB out. Sized only after evaluating, then refused."""
    model = _model(f"""
        g (float[2048,2048] x) => (float[2048,2048] y) <float[2048,1] a = {{{", ".join(["1"] * 2048)}}}, float[1,2048] b = {{{", ".join(["2"] * 2048)}}}> {{
            m = MatMul (a, b)
            y = Add (x, m)
        }}""")
    result = graphopt.optimize(model, passes=["cleanup"], verify="off")
    assert [node.op_type for node in result.model.graph.node] == ["MatMul", "Add"]
    assert result.report["passes"][0]["details"]["constants_folded"] == 0


@pytest.mark.parametrize(
    ("output", "call"),
    [("float[2,3]", "RandomNormalLike (a)"), ("float[2,3]", "RandomUniformLike (a)"), ("float[2,3]", "Bernoulli (p)"), ("int32[1,2]", "Multinomial <sample_size = 2> (logits)")],
)
def test_random_ops_on_constant_inputs_are_not_folded(output, call, evaluated):
    model = _model(f"""
        g () => ({output} y) <float[2,3] a = {{1, 2, 3, 4, 5, 6}}, float[2,3] p = {{0.5, 0.5, 0.5, 0.5, 0.5, 0.5}}, float[1,3] logits = {{0, 0, 0}}> {{
            y = {call}
        }}""")
    result = graphopt.optimize(model, passes=["cleanup"], verify="off")
    assert [node.op_type for node in result.model.graph.node] == [call.split()[0]]
    assert evaluated["numpy"] == [] and evaluated["onnxruntime"] == []


def test_constants_inside_an_if_body_fold_in_the_body():
    model = _model("""
        g (bool c, float[3] x) => (float[3] y) <float[3] w = {0.1, 0.2, 0.3}> {
            y = If (c) <
                then_branch = t () => (float[3] a) { s = Sin (w)  k = Mul (s, w)  a = Add (x, k) },
                else_branch = e () => (float[3] b) { b = Neg (x) }
            >
        }""")
    feeds = {"c": np.array(True), "x": np.array([1, 2, 3], np.float32)}
    cleaned, stats = _cleanup(model, feeds=feeds)
    body = cleaned.graph.node[0].attribute[0].g
    assert [node.op_type for node in body.node] == ["Add"]
    assert stats["constants_folded"] == 2


def test_a_constant_node_bigger_than_the_growth_limit_still_becomes_an_initializer():
    """Its value is in the model already (paddle2onnx stores 3 MB weights this way in PP-OCR rec)."""
    weight = np.arange(512 * 1024, dtype=np.float32).reshape(1024, 512) / 1e6  # 2 MiB
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(weight)),
         onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 1024])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 512])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    cleaned, stats = _cleanup(model, feeds={"x": np.ones((2, 1024), np.float32)})
    assert [node.op_type for node in cleaned.graph.node] == ["MatMul"]
    assert stats["constants_folded"] == 1


def test_a_bfloat16_constant_is_never_folded_into_another_type():
    """numpy has no bfloat16: the runtime evaluates the chain, and only the float result folds."""
    value = onnx.helper.make_tensor("v", onnx.TensorProto.BFLOAT16, [2], [1.5, 2.0])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["c"], value=value), onnx.helper.make_node("Cast", ["c"], ["y"], to=onnx.TensorProto.FLOAT)],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    cleaned, _ = _cleanup(model)
    assert {t.data_type for t in cleaned.graph.initializer} <= {onnx.TensorProto.FLOAT}
    assert _run(cleaned)[0].tolist() == [1.5, 2.0]
