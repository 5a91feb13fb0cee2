"""graphopt_plugins/fuse/reshape_own_dims.py: a Reshape target built from the input's own Shape becomes a constant."""

import numpy as np
from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights


def test_paddle_style_flatten_target_becomes_constant_and_matmul_add_then_gemm():
    # Reshape(x, Concat(Cast(Slice(Cast(Shape(x)), 0, 1)), [-1])): x.view(x.size(0), -1)
    init = weights(zero=np.array([0], np.int64), one=np.array([1], np.int64), rest=np.array([-1], np.int32),
                   w=rand(12, 2), b=rand(2, seed=1))
    model = model_from_text(f"""
        g (float[N,3,2,2] x) => (float[N,2] y) {init} {{
            s = Shape(x)
            s32 = Cast<to=6>(s)
            first = Slice(s32, zero, one, zero, one)
            target32 = Concat<axis=0>(first, rest)
            target = Cast<to=7>(target32)
            flat = Reshape(x, target)
            m = MatMul(flat, w)
            y = Add(m, b)
        }}""", opset=13)
    fused, stats = fuse_and_check(model, feeds={"x": rand(2, 3, 2, 2, seed=5)})
    assert stats["reshape_own_dims"] == 1
    # the Reshape's result is now known to be 2-D, so the bias Add folds (a MatMul with a bias is a Gemm)
    assert stats.get("scale_after", 0) + stats.get("gemm_from_matmul_add", 0) == 1
    assert op_counts(fused) == {"Reshape": 1, "Gemm": 1}


def test_gathered_dim_moved_to_another_position_stays():
    init = weights(zero=np.array(0, np.int64), axes=np.array([0], np.int64), head=np.array([3], np.int64))
    model = model_from_text(f"""
        g (float[N,3] x) => (float[3,N] y) {init} {{
            s = Shape(x)
            n = Gather(s, zero)
            n1 = Unsqueeze(n, axes)
            target = Concat<axis=0>(head, n1)
            y = Reshape(x, target)
        }}""", opset=13)
    fused, stats = fuse_and_check(model, feeds={"x": rand(2, 3, seed=5)})
    assert stats.get("reshape_own_dims", 0) == 0
    assert op_counts(fused)["Shape"] == 1


def test_a_rewrite_that_makes_later_shapes_known_is_followed_in_the_same_run():
    # the Casts stop ONNX data propagation, so r's shape is unknown until its target is constant;
    # the second target reads r's (then static) dim 1, so it is provable only after a refresh
    init = weights(zero=np.array([0], np.int64), one=np.array([1], np.int64), two=np.array([2], np.int64),
                   rest=np.array([-1], np.int32))
    model = model_from_text(f"""
        g (float[N,3,4] x) => (float[12,N] y) {init} {{
            s = Shape(x)
            s32 = Cast<to=6>(s)
            first = Slice(s32, zero, one, zero, one)
            t32 = Concat<axis=0>(first, rest)
            t = Cast<to=7>(t32)
            r = Reshape(x, t)
            a = Relu(r)
            rs = Shape(r)
            rs32 = Cast<to=6>(rs)
            width = Slice(rs32, one, two, zero, one)
            u32 = Concat<axis=0>(width, rest)
            u = Cast<to=7>(u32)
            y = Reshape(a, u)
        }}""", opset=13)
    fused, stats = fuse_and_check(model, feeds={"x": rand(2, 3, 4, seed=5)})
    assert stats["reshape_own_dims"] == 2
    assert op_counts(fused) == {"Reshape": 2, "Relu": 1}


def _counting_refreshes(monkeypatch) -> list:
    from graphopt import tensor_shapes

    calls, refresh = [], tensor_shapes.refresh_shapes
    monkeypatch.setattr(tensor_shapes, "refresh_shapes", lambda graph: calls.append(graph) or refresh(graph))
    return calls


def test_a_flatten_with_no_shape_read_downstream_needs_no_whole_graph_inference(monkeypatch):
    init = weights(zero=np.array([0], np.int64), one=np.array([1], np.int64), rest=np.array([-1], np.int64),
                   w=rand(12, 2))
    model = model_from_text(f"""
        g (float[N,3,2,2] x) => (float[N,2] y) {init} {{
            s = Shape(x)
            first = Slice(s, zero, one, zero, one)
            target = Concat<axis=0>(first, rest)
            flat = Reshape(x, target)
            y = MatMul(flat, w)
        }}""", opset=13)
    refreshes = _counting_refreshes(monkeypatch)
    fused, stats = fuse_and_check(model, feeds={"x": rand(2, 3, 2, 2, seed=5)})
    assert stats["reshape_own_dims"] == 1
    assert refreshes == []


def test_a_shape_read_downstream_of_the_rewrite_gets_a_whole_graph_inference(monkeypatch):
    init = weights(zero=np.array([0], np.int64), one=np.array([1], np.int64), rest=np.array([-1], np.int64))
    model = model_from_text(f"""
        g (float[N,3,2,2] x) => (float[N,12] y, int64[2] s2) {init} {{
            s = Shape(x)
            first = Slice(s, zero, one, zero, one)
            target = Concat<axis=0>(first, rest)
            y = Reshape(x, target)
            s2 = Shape(y)
        }}""", opset=13)
    refreshes = _counting_refreshes(monkeypatch)
    fused, stats = fuse_and_check(model, feeds={"x": rand(2, 3, 2, 2, seed=5)})
    assert stats["reshape_own_dims"] == 1
    assert len(refreshes) >= 1


def test_a_shape_read_only_by_targets_the_rule_made_constant_needs_no_whole_graph_inference(monkeypatch):
    # Shape(r) feeds only the second target, which the same call makes constant: once that
    # chain is dead, nothing downstream reads a shape
    init = weights(zero=np.array([0], np.int64), one=np.array([1], np.int64), two=np.array([2], np.int64),
                   rest=np.array([-1], np.int64))
    model = model_from_text(f"""
        g (float[N,3,4] x) => (float[N,12] y) {init} {{
            s = Shape(x)
            first = Slice(s, zero, one, zero, one)
            t = Concat<axis=0>(first, rest)
            r = Reshape(x, t)
            a = Relu(r)
            rs = Shape(r)
            lead = Slice(rs, zero, one, zero, one)
            u = Concat<axis=0>(lead, rest)
            y = Reshape(a, u)
        }}""", opset=13)
    refreshes = _counting_refreshes(monkeypatch)
    fused, stats = fuse_and_check(model, feeds={"x": rand(2, 3, 4, seed=5)})
    assert stats["reshape_own_dims"] == 2
    assert op_counts(fused) == {"Reshape": 2, "Relu": 1}
    assert refreshes == []
