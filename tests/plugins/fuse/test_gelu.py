"""graphopt_plugins/fuse/gelu.py: GELU in its erf and tanh forms → Gelu (opset 20) or contrib Gelu/FastGelu."""

import numpy as np
import onnx
import onnx.printer
import pytest
from fuse_support import fuse_and_check, model_from_text, op_counts

# The erf form in the orders the exporters write it; `x` is the input, `e` the 1 + erf(...) term.
ERF_HEAD = """
    d = Div(x, s2)
    r = Erf(d)
    e = Add(r, one)
"""
ERF_ORDERS = {
    "torchscript": "m = Mul(x, e)\n y = Mul(m, half)",
    "dynamo": "h = Mul(half, e)\n y = Mul(x, h)",
    "half_x_first": "hx = Mul(x, half)\n y = Mul(hx, e)",
    "divide_by_two": "m = Mul(e, x)\n y = Div(m, two)",
}
CONSTANTS = "<float s2 = {1.4142135}, float one = {1.0}, float half = {0.5}, float two = {2.0}>"


def erf_model(order: str, opset: int, extra_output: str = "") -> object:
    outputs = "float[2,8] y" + (f", float[2,8] {extra_output}" if extra_output else "")
    return model_from_text(f"""
        g (float[2,8] x) => ({outputs}) {CONSTANTS} {{
            {ERF_HEAD}
            {ERF_ORDERS[order]}
        }}""", opset=opset)


def tanh_model(cube: str, opset: int):
    cubes = {
        "pow": "c = Pow(x, three)",
        "mul": "sq = Mul(x, x)\n c = Mul(x, sq)",
    }
    return model_from_text(f"""
        g (float[2,8] x) => (float[2,8] y)
        <float k = {{0.044715}}, float a = {{0.7978846}}, float one = {{1.0}}, float half = {{0.5}}, float three = {{3.0}}> {{
            {cubes[cube]}
            kc = Mul(k, c)
            i = Add(x, kc)
            t0 = Mul(a, i)
            t = Tanh(t0)
            e = Add(one, t)
            m = Mul(x, e)
            y = Mul(half, m)
        }}""", opset=opset)


@pytest.mark.parametrize("quadratic", ["kx_x", "x_xk", "k_xx"])
def test_factored_tanh_form_fuses(quadratic):
    # Hugging Face's FastGELU: 0.5 * x * (1 + tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))
    forms = {
        "kx_x": "kx = Mul(k, x)\n q = Mul(kx, x)",
        "x_xk": "xk = Mul(x, k)\n q = Mul(x, xk)",
        "k_xx": "xx = Mul(x, x)\n q = Mul(k, xx)",
    }
    model = model_from_text(f"""
        g (float[2,8] x) => (float[2,8] y)
        <float k = {{0.044715}}, float a = {{0.7978846}}, float one = {{1.0}}, float half = {{0.5}}> {{
            ax = Mul(x, a)
            {forms[quadratic]}
            p = Add(one, q)
            t0 = Mul(ax, p)
            t = Tanh(t0)
            e = Add(one, t)
            h = Mul(half, x)
            y = Mul(h, e)
        }}""", opset=20)
    fused, stats = fuse_and_check(model)
    assert stats["gelu"] == 1
    assert op_counts(fused) == {"Gelu": 1}


@pytest.mark.parametrize("order", sorted(ERF_ORDERS))
def test_erf_form_becomes_gelu_at_opset_20(order):
    fused, stats = fuse_and_check(erf_model(order, 20))
    assert stats["gelu"] == 1
    assert op_counts(fused) == {"Gelu": 1}
    assert not fused.graph.node[0].attribute  # approximate="none" is the default


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_tanh_form_becomes_gelu_tanh_at_opset_20(cube):
    fused, stats = fuse_and_check(tanh_model(cube, 20))
    assert stats["gelu"] == 1
    assert op_counts(fused) == {"Gelu": 1}
    assert fused.graph.node[0].attribute[0].s == b"tanh"


def test_below_opset_20_the_pattern_stays_for_standard_target():
    model = erf_model("torchscript", 18)
    fused, stats = fuse_and_check(model)
    assert stats.get("gelu", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_contrib_gelu_and_fastgelu_under_onnxruntime_target():
    fused, stats = fuse_and_check(erf_model("dynamo", 17), target="onnxruntime")
    assert stats["gelu"] == 1
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [("Gelu", "com.microsoft")]
    assert {(o.domain, o.version) for o in fused.opset_import} == {("", 17), ("com.microsoft", 1)}
    fused, stats = fuse_and_check(tanh_model("pow", 17), target="onnxruntime")
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [("FastGelu", "com.microsoft")]


def test_intermediate_with_another_reader_stays():
    model = erf_model("torchscript", 20, extra_output="e")
    fused, stats = fuse_and_check(model)
    assert stats.get("gelu", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_wrong_constant_stays():
    model = model_from_text(f"""
        g (float[2,8] x) => (float[2,8] y) <float s2 = {{1.5}}, float one = {{1.0}}, float half = {{0.5}}> {{
            {ERF_HEAD}
            m = Mul(x, e)
            y = Mul(m, half)
        }}""", opset=20)
    fused, stats = fuse_and_check(model)
    assert stats.get("gelu", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_gelu_inside_an_if_branch_fuses():
    model = model_from_text(f"""
        g (bool c, float[2,8] x) => (float[2,8] y) {CONSTANTS} {{
            y = If(c) <
                then_branch = then_g () => (float[2,8] t) {{
                    d = Div(x, s2)
                    r = Erf(d)
                    e = Add(r, one)
                    m = Mul(x, e)
                    t = Mul(m, half)
                }},
                else_branch = else_g () => (float[2,8] u) {{
                    u = Relu(x)
                }}
            >
        }}""", opset=20)
    for flag in (True, False):
        fused, stats = fuse_and_check(model, feeds={"c": np.array(flag)})
        assert stats["gelu"] == 1
        branch = next(a.g for a in fused.graph.node[0].attribute if a.name == "then_branch")
        assert [n.op_type for n in branch.node] == ["Gelu"]


def test_float64_gelu_stays_because_onnxruntime_has_no_kernel():
    # The tanh form: onnxruntime has no float64 Erf either, so the erf form would not even run.
    text = onnx.printer.to_text(tanh_model("pow", 20).graph).replace("float", "double")
    model = model_from_text(text, opset=20)
    feeds = {"x": np.linspace(-3, 3, 16).reshape(2, 8)}
    fused, stats = fuse_and_check(model, feeds=feeds, target="onnxruntime")
    assert stats.get("gelu", 0) == 0
    assert op_counts(fused) == op_counts(model)
