"""graphopt_plugins/fuse/reshape_chain.py: Reshape∘Reshape (or Flatten) collapsed into one Reshape."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import weights


def test_reshape_chains_collapse_and_zero_dims_are_resolved():
    init = weights(s1=np.array([6, 4], np.int64), s2=np.array([0, 2, 2], np.int64), s3=np.array([4, -1], np.int64))
    model = model_from_text(f"""
        g (float[2,3,4] x) => (float[6,2,2] y, float[4,6] z) {init} {{
            a = Reshape(x, s1)
            y = Reshape(a, s2)
            f = Flatten<axis=2>(x)
            z = Reshape(f, s3)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["reshape_chain"] == 2
    assert op_counts(fused) == {"Reshape": 2}


def test_inner_reshape_with_another_reader_stays():
    init = weights(s1=np.array([6, 4], np.int64), s2=np.array([24], np.int64))
    model = model_from_text(f"""
        g (float[2,3,4] x) => (float[24] y, float[6,4] a) {init} {{
            a = Reshape(x, s1)
            y = Reshape(a, s2)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("reshape_chain", 0) == 0
    assert op_counts(fused) == {"Reshape": 2}
