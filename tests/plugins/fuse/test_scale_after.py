"""graphopt_plugins/fuse/scale_after.py: per-channel Mul/Add/Sub/Div after a linear node folded into it."""

import numpy as np
from onnx import numpy_helper
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights


def test_channel_scale_and_scalar_shift_fold_into_conv():
    init = weights(w=rand(4, 3, 3, 3), s=rand(1, 4, 1, 1, low=0.5, high=2), t=np.array([0.25], np.float32),
                   d=rand(4, 1, 1, low=1, high=2, seed=3))
    model = model_from_text(f"""
        g (float[1,3,6,6] x) => (float[1,4,4,4] y) {init} {{
            c = Conv(x, w)
            m = Mul(s, c)
            a = Sub(m, t)
            y = Div(a, d)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["scale_after"] == 3
    assert op_counts(fused) == {"Conv": 1}


def test_scale_folds_into_3d_matmul_and_shift_into_gemm():
    init = weights(w=rand(4, 5), s=rand(5, low=0.5, high=2), v=rand(5, 3, seed=2), t=rand(3, seed=3))
    model = model_from_text(f"""
        g (float[2,3,4] x, float[2,5] z) => (float[2,3,5] y, float[2,3] u) {init} {{
            m = MatMul(x, w)
            y = Mul(m, s)
            n = MatMul(z, v)
            u = Add(n, t)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["scale_after"] == 2
    assert op_counts(fused) == {"MatMul": 1, "Gemm": 1}



def test_a_shift_alone_leaves_the_weight_as_it_was():
    init = weights(w=rand(4, 3, 3, 3), t=rand(1, 4, 1, 1, seed=2))
    model = model_from_text(f"""
        g (float[1,3,6,6] x) => (float[1,4,4,4] y) {init} {{
            c = Conv(x, w)
            y = Add(c, t)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["scale_after"] == 1 and op_counts(fused) == {"Conv": 1}
    conv = fused.graph.node[0]
    assert conv.input[1] == "w"  # the weight itself, not a rescaled copy of it
    weight = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}["w"]
    assert np.array_equal(weight, numpy_helper.to_array(model.graph.initializer[0]))


def test_shift_after_a_3d_matmul_or_spatial_constants_stay():
    init = weights(w=rand(4, 5), t=rand(5), k=rand(3, 3, 1, 1), cw=rand(3, 3, 1, 1, seed=4), p=rand(1, 1, 4, 4, seed=5))
    model = model_from_text(f"""
        g (float[2,3,4] x, float[1,3,4,4] i) => (float[2,3,5] y, float[1,3,4,4] z, float[1,3,4,4] q) {init} {{
            m = MatMul(x, w)
            y = Add(m, t)
            c = Conv(i, cw)
            z = Mul(c, p)
            d = Conv(i, k)
            q = Sub(p, d)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("scale_after", 0) == 0
    assert op_counts(fused) == {"MatMul": 1, "Add": 1, "Conv": 2, "Mul": 1, "Sub": 1}


def test_conv_output_with_another_reader_keeps_its_scale():
    init = weights(w=rand(4, 3, 1, 1), s=rand(1, 4, 1, 1))
    model = model_from_text(f"""
        g (float[1,3,4,4] x) => (float[1,4,4,4] y, float[1,4,4,4] r) {init} {{
            c = Conv(x, w)
            y = Mul(c, s)
            r = Relu(c)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("scale_after", 0) == 0
    assert op_counts(fused) == {"Conv": 1, "Mul": 1, "Relu": 1}


def test_caffe2_style_scale_and_bias_after_a_batchnorm_fold_into_it():
    init = weights(gamma=rand(4, low=0.5, high=1.5), beta=rand(4, seed=2), mean=rand(4, seed=3),
                   var=rand(4, low=0.5, high=2, seed=4), s=rand(4, 1, 1, seed=5), t=rand(4, 1, 1, seed=6))
    model = model_from_text(f"""
        g (float[1,4,3,3] x) => (float[1,4,3,3] y) {init} {{
            r = Relu(x)
            b = BatchNormalization(r, gamma, beta, mean, var)
            m = Mul(b, s)
            y = Add(m, t)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["scale_after"] == 2
    assert op_counts(fused) == {"Relu": 1, "BatchNormalization": 1}


def test_rules_stay_within_one_graph_level_and_fire_inside_bodies():
    init = weights(w=rand(4, 3, 1, 1), s=rand(1, 4, 1, 1, low=0.5, high=2))
    model = model_from_text(f"""
        g (float[1,3,4,4] x, bool flag) => (float[1,4,4,4] y) {init} {{
            c = Conv(x, w)
            y = If(flag) <
                then_branch = then_g () => (float[1,4,4,4] a) {{ a = Mul(c, s) }},
                else_branch = else_g () => (float[1,4,4,4] b) {{
                    k = Conv(x, w)
                    b = Mul(k, s)
                }}
            >
        }}""")
    for flag in (True, False):
        fused, stats = fuse_and_check(model, feeds={"flag": np.array(flag)})
        assert stats["scale_after"] == 1  # inside the else body; the then body's Mul reads the outer Conv
        assert [node.op_type for node in fused.graph.node] == ["Conv", "If"]
        then_body, else_body = (attr.g for attr in fused.graph.node[1].attribute)
        assert [node.op_type for node in then_body.node] == ["Mul"]
        assert [node.op_type for node in else_body.node] == ["Conv"]


def test_a_mul_by_a_vector_holding_zeros_folds_without_a_division_warning():
    import warnings
    model = model_from_text("""
        g (float[2,4] x) => (float[2,3] y) <float[4,3] w = {1,2,3,4,5,6,7,8,9,10,11,12}, float[3] s = {0, 2, -1}> {
            h = MatMul(x, w)
            y = Mul(h, s)
        }""")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fused, stats = fuse_and_check(model)
    assert stats["scale_after"] == 1 and op_counts(fused) == {"MatMul": 1}
