"""graphopt_plugins/fuse/value_bias.py: the value bias moved past softmax(…)·V into the output projection's bias."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights

SPLIT, MERGE = np.array([2, 4, 2, 4], np.int64), np.array([2, 4, 8], np.int64)


def _attention(bias_shape=(8,), softmax_axis: int = -1, tail: str = "o1 = Add(o0, bo)") -> str:
    init = weights(wv=rand(8, 8, seed=1), bv=rand(*bias_shape, seed=2) * 3, wo=rand(8, 8, seed=3), bo=rand(8, seed=4),
                   split=SPLIT, merge=MERGE)
    return f"""
        g (float[2,2,4,4] scores, float[2,4,8] x) => (float[2,4,8] y) {init} {{
            p = Softmax<axis = {softmax_axis}>(scores)
            v0 = MatMul(x, wv)
            v1 = Add(v0, bv)
            v2 = Reshape(v1, split)
            v = Transpose<perm = [0, 2, 1, 3]>(v2)
            a = MatMul(p, v)
            a1 = Transpose<perm = [0, 2, 1, 3]>(a)
            a2 = Reshape(a1, merge)
            o0 = MatMul(a2, wo)
            {tail}
            y = Relu(o1)
        }}"""


def test_the_value_bias_moves_into_the_output_projection_bias():
    fused, stats = fuse_and_check(model_from_text(_attention()))
    assert stats["value_bias"] == 1
    assert op_counts(fused)["Add"] == 1  # the output projection's, now carrying the value bias


def test_a_bias_along_the_summed_axis_another_softmax_axis_no_output_bias_and_the_onnxruntime_target_stay():
    for text in (_attention(bias_shape=(4, 8)),  # one bias per position: varies along the axis P sums over
                 _attention(softmax_axis=2),  # rows of P along another axis do not sum to 1
                 _attention(tail="o1 = Relu(o0)")):  # no bias Add after the projection to take it
        fused, stats = fuse_and_check(model_from_text(text))
        assert stats.get("value_bias", 0) == 0
    fused, stats = fuse_and_check(model_from_text(_attention()), target="onnxruntime")
    assert stats.get("value_bias", 0) == 0
