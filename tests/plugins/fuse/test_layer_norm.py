"""graphopt_plugins/fuse/layer_norm.py: decomposed LayerNorm → LayerNormalization (opset ≥ 17)."""

import numpy as np
import onnx
import pytest
from fuse_support import fuse_and_check, model_from_text, op_counts

GAMMA_BETA = "float[8] gamma = {0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0}, float[8] beta = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}"


def reduce_mean(out: str, arg: str, opset: int, axes: str = "[-1]") -> str:
    """ReduceMean over `axes`: an attribute before opset 18, an input from 18 on."""
    if opset >= 18:
        return f"{out} = ReduceMean({arg}, axes)"
    return f"{out} = ReduceMean<axes={axes}>({arg})"


def layer_norm_model(opset: int, square: str = "pow", affine: bool = True, axes: str = "[-1]",
                     extra_output: str = "") -> onnx.ModelProto:
    axes_list = axes.strip("[]")
    squares = {"pow": "p = Pow(d, two)", "mul": "p = Mul(d, d)"}
    tail = "n0 = Div(d, s)\n m = Mul(n0, gamma)\n y = Add(m, beta)" if affine else "y = Div(d, s)"
    outputs = "float[2,4,8] y" + (f", float[2,4,8] {extra_output}" if extra_output else "")
    return model_from_text(f"""
        g (float[2,4,8] x) => ({outputs})
        <float two = {{2.0}}, float eps = {{1e-5}}, int64[{len(axes_list.split(','))}] axes = {{{axes_list}}}, {GAMMA_BETA}> {{
            {reduce_mean("mu", "x", opset, axes)}
            d = Sub(x, mu)
            {squares[square]}
            {reduce_mean("v", "p", opset, axes)}
            ve = Add(v, eps)
            s = Sqrt(ve)
            {tail}
        }}""", opset=opset)


@pytest.mark.parametrize("opset", [17, 18])  # axes an attribute at 17, an input at 18
@pytest.mark.parametrize("square", ["pow", "mul"])
def test_layer_norm_with_gamma_beta_fuses(opset, square):
    fused, stats = fuse_and_check(layer_norm_model(opset, square))
    assert stats["layer_norm"] == 1
    assert op_counts(fused) == {"LayerNormalization": 1}
    node = fused.graph.node[0]
    assert len(node.input) == 3
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["axis"] == -1


def test_reciprocal_form_fuses():
    model = model_from_text(f"""
        g (float[2,4,8] x) => (float[2,4,8] y) <float eps = {{1e-5}}, {GAMMA_BETA}> {{
            mu = ReduceMean<axes=[-1]>(x)
            d = Sub(x, mu)
            p = Mul(d, d)
            v = ReduceMean<axes=[-1]>(p)
            ve = Add(eps, v)
            s = Sqrt(ve)
            r = Reciprocal(s)
            n0 = Mul(r, d)
            m = Mul(gamma, n0)
            y = Add(beta, m)
        }}""", opset=17)
    fused, stats = fuse_and_check(model)
    assert stats["layer_norm"] == 1
    assert op_counts(fused) == {"LayerNormalization": 1}


def test_layer_norm_without_affine_gets_unit_scale():
    fused, stats = fuse_and_check(layer_norm_model(17, affine=False))
    assert stats["layer_norm"] == 1
    assert op_counts(fused) == {"LayerNormalization": 1}
    scale = next(t for t in fused.graph.initializer if t.name == fused.graph.node[0].input[1])
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(scale), np.ones(8, np.float32))


def test_two_trailing_axes_fuse_with_axis_minus_two():
    model = model_from_text("""
        g (float[2,4,8] x) => (float[2,4,8] y) <float two = {2.0}, float eps = {1e-5}> {
            mu = ReduceMean<axes=[1, 2]>(x)
            d = Sub(x, mu)
            p = Pow(d, two)
            v = ReduceMean<axes=[-2, -1]>(p)
            ve = Add(v, eps)
            s = Sqrt(ve)
            y = Div(d, s)
        }""", opset=17)
    fused, stats = fuse_and_check(model)
    assert stats["layer_norm"] == 1
    node = fused.graph.node[0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["axis"] == -2


def test_below_opset_17_the_pattern_stays():
    model = layer_norm_model(16)
    fused, stats = fuse_and_check(model, target="onnxruntime")
    assert stats.get("layer_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_not_the_last_axis_stays():
    model = layer_norm_model(17, axes="[1]")
    fused, stats = fuse_and_check(model)
    assert stats.get("layer_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_centred_input_read_elsewhere_stays():
    model = layer_norm_model(17, extra_output="d")
    fused, stats = fuse_and_check(model)
    assert stats.get("layer_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)


@pytest.mark.parametrize("consumer", ["MatMul", "Gemm"])
def test_below_opset_17_the_form_onnxruntime_fuses_is_kept_and_warned_of(consumer, tmp_path):
    """PP-OCRv4 rec (opset 12): the folds took γ into the next MatMul and β/γ into an Add, and
    onnxruntime's LayerNormFusion no longer saw a LayerNorm there."""
    from fuse_support import onnxruntime_ops

    linear = "y = MatMul(ln, w)" if consumer == "MatMul" else "f = Reshape(ln, flat)\n y = Gemm(f, w)"
    out_shape = "float[2,4,3]" if consumer == "MatMul" else "float[8,3]"
    model = model_from_text(f"""
        g (float[2,4,8] x) => ({out_shape} y)
        <float two = {{2.0}}, float eps = {{1e-5}}, {GAMMA_BETA}, float[8,3] w = {{{', '.join(str(0.1 * i) for i in range(24))}}},
         int64[2] flat = {{8, 8}}> {{
            mu = ReduceMean<axes=[-1]>(x)
            d = Sub(x, mu)
            p = Pow(d, two)
            v = ReduceMean<axes=[-1]>(p)
            ve = Add(v, eps)
            s = Sqrt(ve)
            n0 = Div(d, s)
            m = Mul(n0, gamma)
            ln = Add(m, beta)
            {linear}
        }}""", opset=12)
    fused, stats = fuse_and_check(model)
    assert not {"scale_before", "layer_norm"} & set(stats)
    assert "LayerNorm(s) left written out" in stats["warnings"][0] and "opset 17" in stats["warnings"][0]
    assert onnxruntime_ops(fused, tmp_path)["LayerNormalization"] == 1
