"""graphopt_plugins/fuse/bn_fold.py: BatchNormalization folded into the Conv/ConvTranspose/Gemm/MatMul before it."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights


def _bn(channels: int, seed: int = 1) -> dict:
    return {
        "gamma": rand(channels, low=0.5, high=1.5, seed=seed),
        "beta": rand(channels, seed=seed + 1),
        "mean": rand(channels, seed=seed + 2),
        "var": rand(channels, low=0.5, high=2.0, seed=seed + 3),
    }


def test_bn_folds_into_grouped_conv_with_bias():
    init = weights(w=rand(4, 2, 3, 3), b=rand(4, seed=9), **_bn(4))
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {init} {{
            c = Conv<group=2, pads=[1,1,1,1]>(x, w, b)
            y = BatchNormalization<epsilon=0.001>(c, gamma, beta, mean, var)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["bn_fold"] == 1
    assert op_counts(fused) == {"Conv": 1}


def test_bn_folds_into_grouped_conv_transpose():
    # ConvTranspose weight is (C_in, C_out/group, k, k): output channel o of group g is W[g*2:(g+1)*2, o % 3]
    init = weights(w=rand(4, 3, 2, 2), **_bn(6))
    model = model_from_text(f"""
        g (float[1,4,3,3] x) => (float[1,6,6,6] y) {init} {{
            c = ConvTranspose<group=2, strides=[2,2]>(x, w)
            y = BatchNormalization(c, gamma, beta, mean, var)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["bn_fold"] == 1
    assert op_counts(fused) == {"ConvTranspose": 1}


def test_bn_folds_into_gemm_with_trans_b_and_into_2d_matmul():
    init = weights(w=rand(5, 3), c=rand(5, seed=4), v=rand(5, 5, seed=5), **_bn(5))
    model = model_from_text(f"""
        g (float[2,3] x) => (float[2,5] y, float[2,5] z) {init} {{
            h = Gemm<transB=1, alpha=0.5, beta=2.0>(x, w, c)
            y = BatchNormalization(h, gamma, beta, mean, var)
            m = MatMul(y, v)
            z = BatchNormalization(m, gamma, beta, mean, var)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["bn_fold"] == 2
    assert op_counts(fused) == {"Gemm": 2}


def test_bn_whose_input_has_another_reader_stays():
    init = weights(w=rand(4, 3, 1, 1), **_bn(4))
    model = model_from_text(f"""
        g (float[1,3,4,4] x) => (float[1,4,4,4] y, float[1,4,4,4] r) {init} {{
            c = Conv(x, w)
            y = BatchNormalization(c, gamma, beta, mean, var)
            r = Relu(c)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("bn_fold", 0) == 0
    assert op_counts(fused)["BatchNormalization"] == 1


def test_bn_after_a_3d_matmul_stays():
    # BN normalises axis 1; a MatMul's output channels are its last axis
    init = weights(w=rand(4, 4), **_bn(3))
    model = model_from_text(f"""
        g (float[2,3,4] x) => (float[2,3,4] y) {init} {{
            m = MatMul(x, w)
            y = BatchNormalization(m, gamma, beta, mean, var)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("bn_fold", 0) == 0
    assert op_counts(fused)["BatchNormalization"] == 1


def test_bn_folds_into_a_conv_whose_weight_is_a_constant_of_shape_fill():
    # onnx's light_* models make their weights this way; the fold materializes the weight
    init = weights(shape=np.array([4, 3, 3, 3], np.int64), **_bn(4))
    model = model_from_text(f"""
        g (float[1,3,5,5] x) => (float[1,4,3,3] y) {init} {{
            w = ConstantOfShape<value=float[1] {{0.25}}>(shape)
            c = Conv(x, w)
            y = BatchNormalization(c, gamma, beta, mean, var)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["bn_fold"] == 1
    assert op_counts(fused) == {"Conv": 1}
