"""graphopt_plugins/fuse/squeeze_pair.py: Squeeze/Unsqueeze pairs on the same axes removed."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import weights


def test_pairs_on_the_same_axes_cancel_with_axes_as_inputs():
    init = weights(a=np.array([0, -1], np.int64), b=np.array([3, 0], np.int64), c=np.array([2, 0], np.int64))
    model = model_from_text(f"""
        g (float[2,3] x, float[1,2,1] z) => (float[2,3] y, float[1,2,1] w) {init} {{
            u = Unsqueeze(x, a)
            s = Squeeze(u, b)
            y = Relu(s)
            r = Relu(z)
            q = Squeeze(r, c)
            w = Unsqueeze(q, a)
        }}""", opset=13)
    fused, stats = fuse_and_check(model)
    assert stats["squeeze_pair"] == 2
    assert op_counts(fused) == {"Relu": 2}  # the second Relu now writes the graph output w


def test_pair_between_a_graph_input_and_a_graph_output_stays():
    model = model_from_text(f"""
        g (float[1,2,1] z) => (float[1,2,1] w) {weights(a=np.array([0, -1], np.int64), c=np.array([2, 0], np.int64))} {{
            q = Squeeze(z, c)
            w = Unsqueeze(q, a)
        }}""", opset=13)
    fused, stats = fuse_and_check(model)
    assert stats.get("squeeze_pair", 0) == 0
    assert op_counts(fused) == {"Squeeze": 1, "Unsqueeze": 1}


def test_pairs_with_attribute_axes_cancel_but_different_axes_stay():
    model = model_from_text("""
        g (float[2,3] x) => (float[2,3] y, float[2,1,3] z) {
            u = Unsqueeze<axes=[1]>(x)
            s = Squeeze<axes=[1]>(u)
            y = Relu(s)
            v = Unsqueeze<axes=[0, 2]>(x)
            z = Squeeze<axes=[0]>(v)
        }""", opset=11)
    fused, stats = fuse_and_check(model)
    assert stats["squeeze_pair"] == 1
    assert op_counts(fused) == {"Relu": 1, "Unsqueeze": 1, "Squeeze": 1}
