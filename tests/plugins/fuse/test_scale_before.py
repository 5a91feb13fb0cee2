"""graphopt_plugins/fuse/scale_before.py: per-channel constants before a linear node folded into its input channels."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, onnxruntime_ops, op_counts
from weights_support import rand, weights


def test_scale_folds_into_grouped_padded_conv_and_shift_into_unpadded_conv():
    init = weights(w=rand(6, 2, 3, 3), s=rand(1, 4, 1, 1, low=0.5, high=2), k=rand(2, 6, 1, 1, seed=2),
                   t=rand(6, 1, 1, seed=3))
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,2,6,6] y) {init} {{
            r = Relu(x)
            m = Mul(r, s)
            c = Conv<group=2, pads=[1,1,1,1]>(m, w)
            q = Relu(c)
            a = Add(q, t)
            y = Conv(a, k)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["scale_before"] == 2
    assert op_counts(fused) == {"Relu": 2, "Conv": 2}


def test_div_and_shift_fold_into_gemm_with_trans_flags():
    init = weights(w=rand(5, 3), c=rand(5, seed=2), d=rand(2, low=1, high=2, seed=3), t=rand(2, seed=4))
    model = model_from_text(f"""
        g (float[3,2] x) => (float[2,5] y) {init} {{
            r = Relu(x)
            h = Div(r, d)
            a = Add(h, t)
            y = Gemm<transA=1, transB=1, alpha=0.5, beta=3.0>(a, w, c)
        }}""")
    # d and t vary along the last axis of the (3, 2) input: under transA that is M, not Gemm's K axis
    fused, stats = fuse_and_check(model)
    assert stats.get("scale_before", 0) == 0
    model = model_from_text(f"""
        g (float[3,2] x) => (float[2,5] y) {weights(w=rand(5, 3), c=rand(5, seed=2), d=rand(3, 1, low=1, high=2, seed=3), t=rand(3, 1, seed=4))} {{
            r = Relu(x)
            h = Div(r, d)
            a = Add(h, t)
            y = Gemm<transA=1, transB=1, alpha=0.5, beta=3.0>(a, w, c)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["scale_before"] == 2
    assert op_counts(fused) == {"Relu": 1, "Gemm": 1}


def test_shift_before_a_padded_conv_is_refused():
    # Conv pads with zeros: folding x + t would treat the border as if it held t
    init = weights(w=rand(4, 4, 3, 3), t=rand(1, 4, 1, 1))
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {init} {{
            r = Relu(x)
            a = Add(r, t)
            y = Conv<pads=[1,1,1,1]>(a, w)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("scale_before", 0) == 0
    assert op_counts(fused) == {"Relu": 1, "Add": 1, "Conv": 1}


def test_hardswish_tail_is_left_to_the_activation_rules():
    init = weights(w=rand(4, 4, 1, 1), three=np.array(3.0, np.float32), six=np.array(6.0, np.float32),
                   zero=np.array(0.0, np.float32))
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {init} {{
            p = Add(x, three)
            c = Clip(p, zero, six)
            m = Mul(x, c)
            d = Div(m, six)
            y = Conv(d, w)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("scale_before", 0) == 0
    assert op_counts(fused) == {"HardSwish": 1, "Conv": 1}  # the whole form, not just its tail


def test_scale_then_shift_before_a_padded_conv_keeps_only_the_shift():
    init = weights(w=rand(4, 1, 3, 3), s=rand(1, 4, 1, 1, low=0.5, high=2), t=np.array([0.3], np.float32))
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {init} {{
            r = Relu(x)
            m = Mul(r, s)
            a = Add(m, t)
            y = Conv<group=4, pads=[1,1,1,1]>(a, w)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["scale_before"] == 1
    assert op_counts(fused) == {"Relu": 1, "Add": 1, "Conv": 1}


def _gelu_then_matmul(opset: int):
    init = weights(w=rand(4, 3), root=np.array(1.4142135, np.float32), one=np.array(1.0, np.float32),
                   half=np.array(0.5, np.float32))
    return model_from_text(f"""
        g (float[2,4] x) => (float[2,3] y) {init} {{
            d = Div(x, root)
            e = Erf(d)
            a = Add(e, one)
            m = Mul(x, a)
            h = Mul(m, half)
            y = MatMul(h, w)
        }}""", opset=opset)


def test_gelu_tail_stays_whole_at_every_opset(tmp_path):
    """Below opset 20 no Gelu op exists, but onnxruntime fuses the written-out form at load;
    folding the 0.5 into W (what this rule once did) left it four kernels."""
    fused, stats = fuse_and_check(_gelu_then_matmul(17))
    assert stats.get("scale_before", 0) == 0
    assert "GELU" in stats["warnings"][0]
    assert onnxruntime_ops(fused, tmp_path) == {"Gelu": 1, "MatMul": 1}
    fused, stats = fuse_and_check(_gelu_then_matmul(20))  # left whole for the GELU rule
    assert stats.get("scale_before", 0) == 0
    assert op_counts(fused) == {"Gelu": 1, "MatMul": 1}
