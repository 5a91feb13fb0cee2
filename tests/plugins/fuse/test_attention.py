"""graphopt_plugins/fuse/attention.py: scaled dot-product attention → contrib MultiHeadAttention (target=onnxruntime)."""

import functools

import onnx
import pytest
from fuse_support import fuse_and_check, model_from_text, op_counts

SPLIT_Q = "qr = Reshape(q, split)\n qt = Transpose<perm=[0,2,1,3]>(qr)"
SPLIT_V = "vr = Reshape(v, split)\n vt = Transpose<perm=[0,2,1,3]>(vr)"
KEYS = {  # Kᵀ as (B, N, H, L)
    "direct": "kr = Reshape(k, split)\n kt = Transpose<perm=[0,2,3,1]>(kr)",
    "swap_last": "kr = Reshape(k, split)\n kh = Transpose<perm=[0,2,1,3]>(kr)\n kt = Transpose<perm=[0,1,3,2]>(kh)",
}
SCORES = {  # `s0` = Q·Kᵀ scaled into `s`
    "div": "s0 = MatMul(qt, kt)\n s = Div(s0, root)",
    "mul": "s0 = MatMul(qt, kt)\n s = Mul(s0, inv_root)",
    # the dynamo exporter's SDPA decomposition: √scale on Q and on Kᵀ separately
    "sqrt_on_q_and_k": "qs = Mul(qt, quarter)\n ks = Mul(kt, quarter)\n s = MatMul(qs, ks)",
}
CONSTANTS = ("<int64[4] split = {2, 6, 4, 4}, int64[3] merge = {2, 6, 16}, float root = {2.0}, "
             "float inv_root = {0.5}, float quarter = {0.70710678}>")


def attention_model(keys="direct", scores="div", mask="[2,1,1,6]", softmax_axis=-1, merge="merge",
                    extra_output="") -> onnx.ModelProto:
    masked, softmax_input = ("m = Add(s, mask)", "m") if mask else ("", "s")
    mask_input = f", float{mask} mask" if mask else ""
    outputs = "float[2,6,16] y" + (f", {extra_output}" if extra_output else "")
    return model_from_text(f"""
        g (float[2,6,16] q, float[2,6,16] k, float[2,6,16] v{mask_input}) => ({outputs}) {CONSTANTS} {{
            {SPLIT_Q}
            {KEYS[keys]}
            {SPLIT_V}
            {SCORES[scores]}
            {masked}
            p = Softmax<axis={softmax_axis}>({softmax_input})
            c = MatMul(p, vt)
            ct = Transpose<perm=[0,2,1,3]>(c)
            y = Reshape(ct, {merge})
        }}""", opset=17)


def mha_attributes(model):
    node = next(n for n in model.graph.node if n.op_type == "MultiHeadAttention")
    assert node.domain == "com.microsoft"
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}, node


@pytest.mark.parametrize("keys", sorted(KEYS))
@pytest.mark.parametrize("scores", sorted(SCORES))
def test_attention_becomes_multi_head_attention(keys, scores):
    fused, stats = fuse_and_check(attention_model(keys, scores), target="onnxruntime")
    assert stats["attention"] == 1
    assert op_counts(fused) == {"MultiHeadAttention": 1, "Expand": 1}  # the mask broadcast to (B, 1, S, L)
    attrs, node = mha_attributes(fused)
    assert attrs["num_heads"] == 4
    assert abs(attrs["scale"] - 0.5) < 1e-6
    assert list(node.input[:3]) == ["q", "k", "v"]
    assert ("com.microsoft", 1) in {(o.domain, o.version) for o in fused.opset_import}


def test_full_mask_needs_no_expand_and_no_mask_needs_no_bias():
    fused, stats = fuse_and_check(attention_model(mask="[1,4,6,6]"), target="onnxruntime")
    assert stats["attention"] == 1 and op_counts(fused) == {"MultiHeadAttention": 1}
    assert mha_attributes(fused)[1].input[5] == "mask"
    fused, stats = fuse_and_check(attention_model(mask=""), target="onnxruntime")
    assert stats["attention"] == 1 and op_counts(fused) == {"MultiHeadAttention": 1}
    assert len(mha_attributes(fused)[1].input) == 3


def test_default_target_keeps_attention():
    model = attention_model()
    fused, stats = fuse_and_check(model)
    assert stats.get("attention", 0) == 0
    assert op_counts(fused)["Softmax"] == 1 and "MultiHeadAttention" not in op_counts(fused)


def test_softmax_over_queries_stays():
    model = attention_model(softmax_axis=2)
    fused, stats = fuse_and_check(model, target="onnxruntime")
    assert stats.get("attention", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_probabilities_read_elsewhere_stay():
    model = attention_model(extra_output="float[2,4,6,6] p")
    fused, stats = fuse_and_check(model, target="onnxruntime")
    assert stats.get("attention", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_merge_into_other_layout_stays():
    model = model_from_text(attention_model_text_with_merge("{2, 16, 6}"), opset=17)
    fused, stats = fuse_and_check(model, target="onnxruntime")
    assert stats.get("attention", 0) == 0
    assert op_counts(fused) == op_counts(model)


def attention_model_text_with_merge(dims: str) -> str:
    return f"""
        g (float[2,6,16] q, float[2,6,16] k, float[2,6,16] v) => (float[2,16,6] y)
        <int64[4] split = {{2, 6, 4, 4}}, int64[3] other = {dims}, float root = {{2.0}}> {{
            {SPLIT_Q}
            {KEYS["direct"]}
            {SPLIT_V}
            {SCORES["div"]}
            p = Softmax<axis=-1>(s)
            c = MatMul(p, vt)
            ct = Transpose<perm=[0,2,1,3]>(c)
            y = Reshape(ct, other)
        }}"""


def _sdpa_export(exporter: str) -> onnx.ModelProto:
    return onnx.load_from_string(_sdpa_bytes(exporter))


@functools.lru_cache(maxsize=None)
def _sdpa_bytes(exporter: str) -> bytes:
    """A head split + torch's scaled_dot_product_attention with a float mask, exported from torch.

    Its decompositions differ from hand-written attention: √scale `Mul`s on Q and Kᵀ, computed
    from `Shape` by torchscript (cleanup folds it), and a flattened swap of K by dynamo.
    """
    import io
    import warnings

    import torch

    torch.manual_seed(0)

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(32, 32) for _ in range(3))

        def forward(self, x, mask):
            batch, seq, _ = x.shape
            heads = [t.view(batch, seq, 4, 8).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x))]
            context = torch.nn.functional.scaled_dot_product_attention(*heads, attn_mask=mask)
            return context.transpose(1, 2).reshape(batch, seq, 32)

    args = (torch.randn(2, 16, 32), torch.randn(2, 1, 1, 16))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(SelfAttention().eval(), args, dynamo=True, opset_version=18, verbose=False,
                              input_names=["x", "mask"], output_names=["y"]).save(buffer)
        else:
            torch.onnx.export(SelfAttention().eval(), args, buffer, dynamo=False, opset_version=17,
                              input_names=["x", "mask"], output_names=["y"])
    return buffer.getvalue()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_torch_sdpa_export_becomes_multi_head_attention(exporter):
    import graphopt

    model = graphopt.optimize(_sdpa_export(exporter), passes=["cleanup"], verify="off").model
    fused, stats = fuse_and_check(model, target="onnxruntime")
    assert stats["attention"] == 1
    assert op_counts(fused) == {"MatMul": 3, "Add": 3, "Expand": 1, "MultiHeadAttention": 1}
    attrs, _ = mha_attributes(fused)
    assert abs(attrs["scale"] - 8 ** -0.5) < 1e-6


@functools.lru_cache(maxsize=None)
def _dynamic_axes_bytes() -> bytes:
    """Hand-written masked attention exported by torchscript with dynamic batch and sequence axes:
    the head split/merge shapes are computed (Shape/Gather/Concat), not constants."""
    import io
    import warnings

    import torch

    torch.manual_seed(0)

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(32, 32) for _ in range(3))

        def forward(self, x, mask):
            batch, seq, _ = x.shape
            q, k, v = (t.view(batch, seq, 4, 8).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
            scores = torch.matmul(q, k.transpose(-1, -2)) / 8 ** 0.5 + mask[:, None, None, :]
            context = torch.matmul(torch.softmax(scores, dim=-1), v)
            return context.transpose(1, 2).reshape(batch, seq, 32)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SelfAttention().eval(), (torch.randn(2, 16, 32), torch.randn(2, 16)), buffer, dynamo=False,
                          opset_version=17, input_names=["x", "mask"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    return buffer.getvalue()


def test_dynamic_axes_export_becomes_multi_head_attention():
    import graphopt
    import numpy as np

    model = graphopt.optimize(onnx.load_from_string(_dynamic_axes_bytes()), passes=["cleanup"], verify="off").model
    rng = np.random.default_rng(0)
    for batch, seq in ((3, 5), (1, 9)):  # other sizes than the export's: the mask expansion reads S at run time
        feeds = {"x": rng.standard_normal((batch, seq, 32)).astype(np.float32),
                 "mask": rng.standard_normal((batch, seq)).astype(np.float32)}
        fused, stats = fuse_and_check(model, feeds=feeds, target="onnxruntime")
        assert stats["attention"] == 1
        counts = op_counts(fused)
        assert counts["MultiHeadAttention"] == 1 and "Softmax" not in counts and "Transpose" not in counts
