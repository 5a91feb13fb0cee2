"""graphopt_plugins/fuse/transpose_into_gemm.py: a 2-D Transpose folded into Gemm's transA/transB."""

from fuse_support import fuse_and_check, model_from_text, op_counts


def test_transposes_fold_into_both_gemm_flags():
    model = model_from_text("""
        g (float[3,4] a, float[5,3] b) => (float[4,5] y) {
            ta = Transpose<perm=[1,0]>(a)
            tb = Transpose(b)
            y = Gemm(ta, tb)
        }""")
    fused, stats = fuse_and_check(model)
    assert stats["transpose_into_gemm"] == 2
    assert op_counts(fused) == {"Gemm": 1}


def test_transpose_with_another_reader_stays():
    model = model_from_text("""
        g (float[3,4] a, float[3,5] b) => (float[4,5] y, float[4,3] t) {
            t = Transpose<perm=[1,0]>(a)
            y = Gemm(t, b)
        }""")
    fused, stats = fuse_and_check(model)
    assert stats.get("transpose_into_gemm", 0) == 0
    assert op_counts(fused) == {"Gemm": 1, "Transpose": 1}
