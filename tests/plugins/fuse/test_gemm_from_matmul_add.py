"""graphopt_plugins/fuse/gemm_from_matmul_add.py: MatMul + Add(bias) on 2-D operands becomes Gemm."""

from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights


def test_2d_matmul_plus_bias_becomes_gemm():
    model = model_from_text(f"""
        g (float[4,3] x, float[3,5] w) => (float[4,5] y) {weights(b=rand(1, 5))} {{
            m = MatMul(x, w)
            y = Add(b, m)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["gemm_from_matmul_add"] == 1
    assert op_counts(fused) == {"Gemm": 1}


def test_batched_matmul_or_growing_bias_stays():
    model = model_from_text(f"""
        g (float[2,4,3] x, float[3,5] w, float[1,3] v, float[4,5] c) => (float[2,4,5] y, float[4,5] u) {weights(b=rand(5))} {{
            m = MatMul(x, w)
            y = Add(m, b)
            n = MatMul(v, w)
            u = Add(n, c)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("gemm_from_matmul_add", 0) == 0
    assert op_counts(fused) == {"MatMul": 2, "Add": 2}
