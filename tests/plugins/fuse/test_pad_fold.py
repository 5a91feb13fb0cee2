"""graphopt_plugins/fuse/pad_fold.py: a constant spatial Pad folded into the pads of Conv/AveragePool/MaxPool."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights


def test_zero_pad_folds_into_conv_and_counting_average_pool():
    init = weights(w=rand(2, 3, 3, 3), pads=np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
                   small=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    model = model_from_text(f"""
        g (float[1,3,5,5] x) => (float[1,2,7,6] y, float[1,3,6,6] z) {init} {{
            p = Pad(x, pads)
            y = Conv<pads=[1,0,0,0]>(p, w)
            q = Pad(x, small)
            z = AveragePool<kernel_shape=[3,3], pads=[0,0,1,1], count_include_pad=1>(q)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["pad_fold"] == 2
    assert op_counts(fused) == {"Conv": 1, "AveragePool": 1}


def test_minus_inf_pad_folds_into_max_pool_with_axes_input():
    init = weights(pads=np.array([1, 1, 1, 1], np.int64), value=np.array(-np.inf, np.float32), axes=np.array([2, 3], np.int64))
    model = model_from_text(f"""
        g (float[1,3,5,5] x) => (float[1,3,6,6] y) {init} {{
            p = Pad(x, pads, value, axes)
            y = MaxPool<kernel_shape=[2,2]>(p)
        }}""", opset=18)
    fused, stats = fuse_and_check(model)
    assert stats["pad_fold"] == 1
    assert op_counts(fused) == {"MaxPool": 1}


def test_pads_that_would_change_results_stay():
    init = weights(w=rand(2, 3, 3, 3), w5=rand(2, 5, 3, 3), pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                   chan=np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64), one=np.array(1.0, np.float32), minf=np.array(-np.inf, np.float32))
    model = model_from_text(f"""
        g (float[1,3,5,5] x) => (float[1,2,5,5] a, float[1,2,5,5] b, float[1,3,6,6] c, float[1,3,6,6] d, float[1,2,3,3] e, float[1,3,8,8] f) {init} {{
            p1 = Pad<mode="reflect">(x, pads)
            a = Conv(p1, w)
            p2 = Pad(x, pads, one)
            b = Conv(p2, w)
            p3 = Pad(x, pads)
            c = AveragePool<kernel_shape=[2,2]>(p3)
            p4 = Pad(x, pads)
            d = MaxPool<kernel_shape=[2,2]>(p4)
            p5 = Pad(x, chan)
            e = Conv(p5, w5)
            p6 = Pad(x, pads, minf)
            f = MaxPool<kernel_shape=[2,2], pads=[1,1,1,1]>(p6)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("pad_fold", 0) == 0
    assert op_counts(fused)["Pad"] == 6  # the last: MaxPool pads would reach its kernel
