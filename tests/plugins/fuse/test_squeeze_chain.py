"""graphopt_plugins/fuse/squeeze_chain.py: Unsqueeze∘Unsqueeze and Squeeze∘Squeeze merged into one node."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import weights


def test_a_mask_unsqueezed_twice_becomes_one_unsqueeze_with_axes_as_inputs():
    init = weights(one=np.array([1], np.int64), two=np.array([2], np.int64), last=np.array([-1], np.int64),
                   first=np.array([0], np.int64))
    model = model_from_text(f"""
        g (float[2,5] m, float[3,4] x) => (float[2,1,1,5] y, float[1,3,4,1] z) {init} {{
            u = Unsqueeze(m, one)
            y = Unsqueeze(u, two)
            v = Unsqueeze(x, last)
            z = Unsqueeze(v, first)
        }}""", opset=13)
    fused, stats = fuse_and_check(model)
    assert stats["squeeze_chain"] == 2
    assert op_counts(fused) == {"Unsqueeze": 2}


def test_squeezes_merge_with_attribute_axes_and_the_positions_of_the_second_shift():
    model = model_from_text("""
        g (float[1,3,1,4,1] x) => (float[3,4] y) {
            s = Squeeze<axes=[2]>(x)
            y = Squeeze<axes=[0, -1]>(s)
        }""", opset=11)
    fused, stats = fuse_and_check(model)
    assert stats["squeeze_chain"] == 1
    node = fused.graph.node[0]
    assert node.op_type == "Squeeze" and list(node.attribute[0].ints) == [0, 2, 4]


def test_a_middle_tensor_with_another_reader_stays_and_so_does_squeeze_of_every_unit_axis():
    model = model_from_text("""
        g (float[3,4] x, float[1,1,3] w) => (float[1,1,3,4] y, float[1,3,4] z, float[3] v) {
            u = Unsqueeze<axes=[0]>(x)
            y = Unsqueeze<axes=[0]>(u)
            z = Relu(u)
            s = Squeeze<axes=[0]>(w)
            v = Squeeze(s)
        }""", opset=11)
    fused, stats = fuse_and_check(model)
    assert stats.get("squeeze_chain", 0) == 0
    assert op_counts(fused) == {"Unsqueeze": 2, "Relu": 1, "Squeeze": 2}
