"""graphopt_plugins/fuse/noop_removal.py: Reshape/Cast/Slice/Expand/Concat/Split that return their input, removed."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import weights


def test_every_kind_of_noop_goes():
    init = weights(shape=np.array([2, -1], np.int64), starts=np.array([0], np.int64), ends=np.array([100], np.int64),
                   axes=np.array([1], np.int64), steps=np.array([1], np.int64), big=np.array([1, 3], np.int64))
    model = model_from_text(f"""
        g (float[2,3] x) => (float[2,3] y) {init} {{
            a = Reshape(x, shape)
            b = Cast<to=1>(a)
            c = Slice(b, starts, ends, axes, steps)
            d = Expand(c, big)
            e = Concat<axis=0>(d)
            f = Split<axis=1>(e)
            h = CastLike(f, x)
            y = Relu(h)
        }}""", opset=15)
    fused, stats = fuse_and_check(model)
    assert stats["noop_removal"] == 7
    assert op_counts(fused) == {"Relu": 1}


def test_noop_feeding_a_graph_output_hands_the_name_to_its_producer():
    model = model_from_text("""
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            y = Cast<to=1>(r)
        }""")
    fused, stats = fuse_and_check(model)
    assert stats["noop_removal"] == 1
    assert op_counts(fused) == {"Relu": 1}
    assert fused.graph.node[0].output[0] == "y"


def test_nodes_that_change_their_input_stay():
    init = weights(shape=np.array([3, 2], np.int64), starts=np.array([1], np.int64), ends=np.array([100], np.int64),
                   axes=np.array([1], np.int64), rev=np.array([-1], np.int64), big=np.array([2, 2, 3], np.int64),
                   neg=np.array([-1], np.int64), far=np.array([-100], np.int64), one=np.array([1.0]))
    model = model_from_text(f"""
        g (float[2,3] x, float[2,3] z) => (float[3,2] a, double[2,3] b, float[2,2] c, float[2,3] r, float[2,2,3] d, float[4,3] e, double[2,3] k) {init} {{
            a = Reshape(x, shape)
            b = Cast<to=11>(x)
            c = Slice(x, starts, ends, axes)
            r = Slice(x, neg, far, axes, rev)
            d = Expand(x, big)
            e = Concat<axis=0>(x, z)
            k = CastLike(x, one)
        }}""", opset=15)
    fused, stats = fuse_and_check(model)
    assert stats.get("noop_removal", 0) == 0
    assert sum(op_counts(fused).values()) == 7
