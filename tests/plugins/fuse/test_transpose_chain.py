"""graphopt_plugins/fuse/transpose_chain.py: Transpose∘Transpose merged or cancelled."""

from fuse_support import fuse_and_check, model_from_text, op_counts


def test_inverse_transposes_cancel():
    model = model_from_text("""
        g (float[2,3,4] x) => (float[2,3,4] y) {
            t = Transpose<perm=[1,2,0]>(x)
            u = Transpose<perm=[2,0,1]>(t)
            y = Relu(u)
        }""")
    fused, stats = fuse_and_check(model)
    assert stats["transpose_chain"] == 1
    assert op_counts(fused) == {"Relu": 1}


def test_two_transposes_merge_into_one():
    model = model_from_text("""
        g (float[2,3,4] x) => (float[4,3,2] y) {
            t = Transpose<perm=[1,0,2]>(x)
            y = Transpose<perm=[2,0,1]>(t)
        }""")
    fused, stats = fuse_and_check(model)
    assert stats["transpose_chain"] == 1
    assert op_counts(fused) == {"Transpose": 1}


def test_inner_transpose_with_another_reader_stays():
    model = model_from_text("""
        g (float[2,3,4] x) => (float[2,3,4] y, float[3,2,4] z) {
            z = Transpose<perm=[1,0,2]>(x)
            y = Transpose<perm=[1,0,2]>(z)
        }""")
    fused, stats = fuse_and_check(model)
    assert stats.get("transpose_chain", 0) == 0
    assert op_counts(fused) == {"Transpose": 2}
