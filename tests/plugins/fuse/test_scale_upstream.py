"""graphopt_plugins/fuse/scale_upstream.py: attention's scalar scale folded into the projection feeding q·kᵀ."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights

SPLIT = np.array([2, 4, 2, 4], np.int64)  # (batch, seq, heads, head size)


def _attention(scale_line: str, extra_outputs: str = "", extra_nodes: str = "", q_op: str = "Identity",
               k_op: str = "Identity") -> str:
    init = weights(wq=rand(8, 8, seed=1), bq=rand(8, seed=2), wk=rand(8, 8, seed=3), split=SPLIT,
                   c=np.array(2.0, np.float32), cv=rand(4, seed=4) + 2.0)
    return f"""
        g (float[2,4,8] x) => (float[2,2,4,4] y{extra_outputs}) {init} {{
            q0 = MatMul(x, wq)
            q1 = Add(bq, q0)
            q2 = {q_op}(q1)
            q3 = Reshape(q2, split)
            q = Transpose<perm = [0, 2, 1, 3]>(q3)
            k0 = MatMul(x, wk)
            k2 = {k_op}(k0)
            k1 = Reshape(k2, split)
            k = Transpose<perm = [0, 2, 3, 1]>(k1)
            s = MatMul(q, k)
            {scale_line}
            y = Softmax<axis = -1>(t)
            {extra_nodes}
        }}"""


def test_the_scale_of_q_kT_moves_into_the_q_projection_and_its_bias():
    fused, stats = fuse_and_check(model_from_text(_attention("t = Div(s, c)")))
    assert stats["scale_upstream"] == 1
    assert "Div" not in op_counts(fused)


def test_a_mul_by_a_scalar_on_the_left_folds_too():
    fused, stats = fuse_and_check(model_from_text(_attention("t = Mul(c, s)")))
    assert stats["scale_upstream"] == 1
    assert "Mul" not in op_counts(fused)


def test_a_per_column_scale_a_shared_score_two_nonlinear_paths_and_the_onnxruntime_target_stay():
    for text in (_attention("t = Div(s, cv)"),  # not a scalar
                 _attention("t = Div(s, c)", ", float[2,2,4,4] z", "z = Relu(s)"),  # the scores have another reader
                 _attention("t = Div(s, c)", q_op="Relu", k_op="Relu")):  # no path a scalar passes
        fused, stats = fuse_and_check(model_from_text(text))
        assert stats.get("scale_upstream", 0) == 0
        assert op_counts(fused)["Div"] == 1
    fused, stats = fuse_and_check(model_from_text(_attention("t = Div(s, c)")), target="onnxruntime")
    assert stats.get("scale_upstream", 0) == 0


def test_a_relu_on_one_path_sends_the_scale_down_the_other():
    fused, stats = fuse_and_check(model_from_text(_attention("t = Div(s, c)", q_op="Relu")))
    assert stats["scale_upstream"] == 1  # into k's projection: Relu(q1 * s) is not Relu(q1) * s
    assert op_counts(fused)["Relu"] == 1 and "Div" not in op_counts(fused)
