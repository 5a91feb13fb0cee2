"""graphopt_plugins/fuse/rms_norm.py: x/sqrt(mean(x²)+eps)*γ → RMSNormalization (opset ≥ 23)."""

import functools

import onnx
import pytest
from fuse_support import fuse_and_check, model_from_text, op_counts

FORMS = {
    "div": "n = Div(x, s)",
    "reciprocal": "ri = Reciprocal(s)\n n = Mul(x, ri)",
    "one_over": "ri = Div(one, s)\n n = Mul(ri, x)",
}


def rms_model(form: str, opset: int, square: str = "Pow(x, two)"):
    mean = "v = ReduceMean(p, axes)" if opset >= 18 else "v = ReduceMean<axes=[-1]>(p)"
    outputs = "float[2,4,8] y"
    return model_from_text(f"""
        g (float[2,4,8] x) => ({outputs})
        <float two = {{2.0}}, float one = {{1.0}}, float eps = {{1e-6}}, int64[1] axes = {{-1}},
         float[8] gamma = {{0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0}}> {{
            p = {square}
            {mean}
            ve = Add(v, eps)
            s = Sqrt(ve)
            {FORMS[form]}
            y = Mul(gamma, n)
        }}""", opset=opset, ir_version=10)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_rms_norm_fuses_at_opset_23(form):
    fused, stats = fuse_and_check(rms_model(form, 23))
    assert stats["rms_norm"] == 1
    assert op_counts(fused) == {"RMSNormalization": 1}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in fused.graph.node[0].attribute}
    assert attrs["axis"] == -1 and abs(attrs["epsilon"] - 1e-6) < 1e-12


def test_square_as_mul_fuses():
    fused, stats = fuse_and_check(rms_model("div", 23, square="Mul(x, x)"))
    assert stats["rms_norm"] == 1


@pytest.mark.parametrize("target", ["onnx", "onnxruntime"])
def test_below_opset_23_the_pattern_stays(target):
    model = rms_model("reciprocal", 22)
    fused, stats = fuse_and_check(model, target=target)
    assert stats.get("rms_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_root_that_is_a_graph_output_stays():
    model = model_from_text("""
        g (float[2,4,8] x) => (float[2,4,8] y, float[2,4,1] s)
        <float two = {2.0}, float eps = {1e-6}, int64[1] axes = {-1}> {
            p = Pow(x, two)
            v = ReduceMean(p, axes)
            ve = Add(v, eps)
            s = Sqrt(ve)
            y = Div(x, s)
        }""", opset=23, ir_version=10)
    fused, stats = fuse_and_check(model)
    assert stats.get("rms_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_centred_input_is_not_an_rms_norm_below_opset_23():
    # A LayerNorm's variance also reads mean(d²): at opset 17 only layer_norm may claim it.
    import test_layer_norm

    fused, stats = fuse_and_check(test_layer_norm.layer_norm_model(17))
    assert stats == {"layer_norm": 1}


@functools.lru_cache(maxsize=None)
def _llama_rms_norm_bytes(exporter: str) -> bytes:
    """`w * (x * rsqrt(mean(x²) + eps))` as Llama-style code writes it, exported from torch."""
    import io
    import warnings

    import torch

    torch.manual_seed(0)

    class RMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.rand(32) + 0.5)

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(RMSNorm().eval(), (torch.randn(2, 16, 32),), dynamo=True, opset_version=18,
                              verbose=False).save(buffer)
        else:
            torch.onnx.export(RMSNorm().eval(), (torch.randn(2, 16, 32),), buffer, dynamo=False, opset_version=17)
    return buffer.getvalue()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_torch_exported_rms_norm_fuses_once_at_opset_23(exporter):
    # torchscript writes rsqrt as Div(1, Sqrt), dynamo as Reciprocal(Sqrt); both carried up to 23.
    import graphopt
    import onnx.version_converter

    model = onnx.load_from_string(_llama_rms_norm_bytes(exporter))
    model = graphopt.optimize(model, passes=["cleanup"], verify="off").model
    fused, stats = fuse_and_check(model)
    assert stats.get("rms_norm", 0) == 0  # exported below 23: stays
    fused, stats = fuse_and_check(onnx.version_converter.convert_version(model, 23))
    assert stats["rms_norm"] == 1
    assert op_counts(fused) == {"RMSNormalization": 1}
