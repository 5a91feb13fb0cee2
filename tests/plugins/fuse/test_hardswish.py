"""graphopt_plugins/fuse/hardswish.py: x*relu6(x+3)/6 and x*HardSigmoid(x) → HardSwish (opset ≥ 14)."""

import numpy as np
import pytest
from fuse_support import fuse_and_check, model_from_text, op_counts

CONSTANTS = "<float three = {3.0}, float zero = {0.0}, float six = {6.0}, float sixth = {0.16666667}>"
CLAMPS = {
    "clip": "r = Clip(a, zero, six)",
    "min_max": "a0 = Max(a, zero)\n r = Min(a0, six)",
    "max_min": "a0 = Min(a, six)\n r = Max(a0, zero)",
    "relu_min": "a0 = Relu(a)\n r = Min(a0, six)",
}
PRODUCTS = {
    "x_then_div": "m = Mul(x, r)\n y = Div(m, six)",
    "div_then_x": "q = Div(r, six)\n y = Mul(x, q)",
    "times_sixth": "m = Mul(r, x)\n y = Mul(m, sixth)",
}


def hardswish_model(clamp: str, product: str, opset: int, extra_output: str = ""):
    outputs = "float[2,3,4,4] y" + (f", float[2,3,4,4] {extra_output}" if extra_output else "")
    return model_from_text(f"""
        g (float[2,3,4,4] x) => ({outputs}) {CONSTANTS} {{
            a = Add(x, three)
            {CLAMPS[clamp]}
            {PRODUCTS[product]}
        }}""", opset=opset)


@pytest.mark.parametrize("clamp", sorted(CLAMPS))
@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_decomposed_hardswish_fuses(clamp, product):
    fused, stats = fuse_and_check(hardswish_model(clamp, product, 14), feeds=None)
    assert stats["hardswish"] == 1
    assert op_counts(fused) == {"HardSwish": 1}


def test_x_times_hardsigmoid_fuses():
    model = model_from_text("""
        g (float[2,8] x) => (float[2,8] y) {
            h = HardSigmoid<alpha=0.16666667, beta=0.5>(x)
            y = Mul(x, h)
        }""", opset=14)
    fused, stats = fuse_and_check(model)
    assert stats["hardswish"] == 1
    assert op_counts(fused) == {"HardSwish": 1}


def test_hardsigmoid_with_other_alpha_stays():
    model = model_from_text("""
        g (float[2,8] x) => (float[2,8] y) {
            h = HardSigmoid<alpha=0.2, beta=0.5>(x)
            y = Mul(x, h)
        }""", opset=14)
    fused, stats = fuse_and_check(model)
    assert stats.get("hardswish", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_below_opset_14_the_clip_form_becomes_x_times_hardsigmoid():
    fused, stats = fuse_and_check(hardswish_model("clip", "x_then_div", 13), target="onnxruntime")
    assert stats["hardswish"] == 1
    assert op_counts(fused) == {"HardSigmoid": 1, "Mul": 1}


def test_below_opset_14_x_times_hardsigmoid_stays():
    model = model_from_text("""
        g (float[2,8] x) => (float[2,8] y) {
            h = HardSigmoid<alpha=0.16666667, beta=0.5>(x)
            y = Mul(x, h)
        }""", opset=13)
    fused, stats = fuse_and_check(model)
    assert stats.get("hardswish", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_clip_with_attribute_bounds_before_opset_11():
    model = model_from_text("""
        g (float[2,8] x) => (float[2,8] y) <float three = {3.0}, float six = {6.0}> {
            a = Add(x, three)
            r = Clip<min=0.0, max=6.0>(a)
            m = Mul(x, r)
            y = Div(m, six)
        }""", opset=10)
    fused, stats = fuse_and_check(model)
    assert stats["hardswish"] == 1
    assert op_counts(fused) == {"HardSigmoid": 1, "Mul": 1}


def test_clamp_read_elsewhere_stays():
    model = hardswish_model("clip", "x_then_div", 14, extra_output="r")
    fused, stats = fuse_and_check(model)
    assert stats.get("hardswish", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_other_bounds_stay():
    model = model_from_text(f"""
        g (float[2,8] x) => (float[2,8] y) {CONSTANTS} {{
            a = Add(x, three)
            r = Clip(a, zero, three)
            m = Mul(x, r)
            y = Div(m, six)
        }}""", opset=14)
    fused, stats = fuse_and_check(model)
    assert stats.get("hardswish", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_exported_cnn_hardswish_sites_fuse():
    import torch_models

    for exporter in torch_models.EXPORTERS:
        model = torch_models.cnn(exporter, 14)
        fused, stats = fuse_and_check(model, feeds=torch_models.cnn_feeds(), rules="hardswish")
        assert stats["hardswish"] == 2, exporter  # the two hand-written x*clamp(x+3,0,6)/6 blocks
        assert op_counts(fused)["HardSwish"] == 3 and "Clip" not in op_counts(fused), exporter


def _as_dtype(model, numpy_type):
    """The float32 model with every input, output and initializer in another float type."""
    import onnx

    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(numpy_type))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = elem_type
    for index, tensor in enumerate(model.graph.initializer):
        array = onnx.numpy_helper.to_array(tensor).astype(numpy_type)
        model.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize(("numpy_type", "fires"), [(np.float16, True), (np.float64, False)])
def test_float16_fuses_and_float64_stays(numpy_type, fires):
    model = _as_dtype(hardswish_model("clip", "x_then_div", 14), numpy_type)
    feeds = {"x": np.linspace(-4, 4, 96).reshape(2, 3, 4, 4).astype(numpy_type)}
    fused, stats = fuse_and_check(model, feeds=feeds)
    assert stats.get("hardswish", 0) == int(fires)
    assert op_counts(fused) == ({"HardSwish": 1} if fires else op_counts(model))
