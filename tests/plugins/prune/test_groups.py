"""Dependency groups, each propagation case on a tiny graph: prune the dead channels, shapes shrink,
outputs stay equal (the removed channels contributed nothing), a second run changes nothing.
Groups that cannot be pruned safely are skipped with their reason, and nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from prune_support import DEAD, assert_close, build, initializer_shapes, prune, weight

X = {"x": [1, 3, 8, 8]}


def _conv(name, inputs, output, **attrs):
    return helper.make_node("Conv", inputs, [output], name=name, **attrs)


def case_bn_elementwise():
    nodes = [
        _conv("c1", ["x", "w1"], "a", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["ms"], name="mul"),
        helper.make_node("Add", ["ms", "one"], ["ad"], name="add"),
        helper.make_node("Clip", ["ad", "lo", "hi"], ["cl"], name="clip"),
        _conv("c2", ["cl", "w2"], "y"),
    ]
    rng = np.random.default_rng(0)
    inits = {
        "w1": weight(4, 3, 3, 3, dead_rows=DEAD), "s": rng.uniform(0.5, 2, 4).astype(np.float32),
        "b": rng.normal(0, 1, 4).astype(np.float32), "m": rng.normal(0, 1, 4).astype(np.float32),
        "v": rng.uniform(0.5, 2, 4).astype(np.float32), "scale": rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32),
        "one": np.float32(1.0), "lo": np.float32(0.0), "hi": np.float32(6.0), "w2": weight(5, 4, 1, 1, dead_cols=DEAD),
    }
    return build(nodes, X, ["y"], inits), {"w1": (2, 3, 3, 3), "s": (2,), "v": (2,), "scale": (1, 2, 1, 1), "w2": (5, 2, 1, 1)}


def case_residual():
    nodes = [
        _conv("ca", ["x", "wa"], "a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="ra"),
        _conv("cb", ["ra", "wb"], "b", pads=[1, 1, 1, 1]),
        _conv("cc", ["x", "wc"], "c"),
        helper.make_node("Add", ["b", "c"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["rs"], name="rs"),
        _conv("cd", ["rs", "wd", "bd"], "y"),
    ]
    inits = {
        "wa": weight(4, 3, 3, 3, dead_rows=DEAD), "wb": weight(4, 4, 3, 3, dead_rows=DEAD, dead_cols=DEAD),
        "wc": weight(4, 3, 1, 1, dead_rows=DEAD), "wd": weight(2, 4, 1, 1, dead_cols=DEAD), "bd": np.ones(2, np.float32),
    }
    return build(nodes, X, ["y"], inits), {"wa": (2, 3, 3, 3), "wb": (2, 2, 3, 3), "wc": (2, 3, 1, 1), "wd": (2, 2, 1, 1)}


def case_concat():
    nodes = [
        _conv("ca", ["x", "wa"], "a"),
        _conv("cb", ["x", "wb", "bb"], "b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["r"], name="relu"),
        _conv("cs", ["r", "ws"], "y"),
    ]
    inits = {
        "wa": weight(4, 3, 1, 1, dead_rows=DEAD), "wb": weight(4, 3, 1, 1, dead_rows=DEAD), "bb": np.ones(4, np.float32),
        "ws": weight(3, 8, 1, 1, dead_cols=DEAD + tuple(4 + c for c in DEAD)),
    }
    return build(nodes, X, ["y"], inits), {"wa": (2, 3, 1, 1), "wb": (2, 3, 1, 1), "bb": (2,), "ws": (3, 4, 1, 1)}


def case_depthwise():
    nodes = [
        _conv("c1", ["x", "w1"], "a"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        _conv("dw", ["r", "wdw", "bdw"], "d", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["rd"], name="relu2"),
        _conv("cs", ["rd", "ws"], "y"),
    ]
    inits = {
        "w1": weight(4, 3, 1, 1, dead_rows=DEAD), "wdw": weight(4, 1, 3, 3), "bdw": np.ones(4, np.float32),
        "ws": weight(3, 4, 1, 1, dead_cols=DEAD),
    }
    return build(nodes, X, ["y"], inits), {"w1": (2, 3, 1, 1), "wdw": (2, 1, 3, 3), "bdw": (2,), "ws": (3, 2, 1, 1)}


def _flat_rows(channels: int, per_channel: int, outputs: int) -> np.ndarray:
    value = weight(channels * per_channel, outputs)
    for c in DEAD:
        value[c * per_channel : (c + 1) * per_channel] = 0.0
    return value


def case_flatten_gemm():
    nodes = [
        _conv("c1", ["x", "w1"], "a"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc"),
    ]
    inits = {"w1": weight(4, 3, 1, 1, dead_rows=DEAD), "g": _flat_rows(4, 16, 6), "gb": np.ones(6, np.float32)}
    return build(nodes, X, ["y"], inits), {"w1": (2, 3, 1, 1), "g": (32, 6)}


def case_reshape_matmul():
    nodes = [
        _conv("c1", ["x", "w1"], "a"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="gap"),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="reshape"),
        helper.make_node("MatMul", ["f", "g"], ["y"], name="fc"),
    ]
    inits = {"w1": weight(4, 3, 1, 1, dead_rows=DEAD), "shape": np.array([1, 4], np.int64), "g": _flat_rows(4, 1, 6)}
    return build(nodes, X, ["y"], inits), {"w1": (2, 3, 1, 1), "g": (2, 6), "shape": (2,)}


def case_squeeze_excite_resize():
    nodes = [
        _conv("c1", ["x", "w1"], "a"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="gap"),
        _conv("se1", ["p", "wse1"], "e1"),
        helper.make_node("Relu", ["e1"], ["re1"], name="se_relu"),
        _conv("se2", ["re1", "wse2", "bse2"], "e2"),
        helper.make_node("HardSigmoid", ["e2"], ["gate"], name="gate"),
        helper.make_node("Mul", ["a", "gate"], ["scaled"], name="excite"),
        helper.make_node("Resize", ["scaled", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("AveragePool", ["up"], ["avg"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        _conv("cs", ["avg", "ws"], "y"),
    ]
    inits = {
        "w1": weight(4, 3, 1, 1, dead_rows=DEAD), "wse1": weight(4, 4, 1, 1, dead_rows=DEAD, dead_cols=DEAD),
        "wse2": weight(4, 4, 1, 1, dead_rows=DEAD, dead_cols=DEAD), "bse2": np.zeros(4, np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32), "ws": weight(3, 4, 1, 1, dead_cols=DEAD),
    }
    return build(nodes, X, ["y"], inits), {"w1": (2, 3, 1, 1), "wse1": (2, 2, 1, 1), "wse2": (2, 2, 1, 1), "ws": (3, 2, 1, 1)}


def case_matmul_ffn():
    w1 = weight(6, 4)
    w1[:, list(DEAD)] *= 1e-3
    nodes = [
        helper.make_node("MatMul", ["h", "w1"], ["a"], name="up"),
        helper.make_node("Add", ["a", "b1"], ["ab"], name="bias"),
        helper.make_node("Relu", ["ab"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="down"),
    ]
    inits = {"w1": w1, "b1": np.ones(4, np.float32), "w2": _flat_rows(4, 1, 6)}
    return build(nodes, {"h": [2, 5, 6]}, ["y"], inits), {"w1": (6, 2), "b1": (2,), "w2": (2, 6)}


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dead_channels_are_pruned_and_outputs_kept(case):
    model, expected = CASES[case]()
    pruned, details = prune(model, structured="channels", ratio=0.5)
    assert details["changed"] and details["channels_removed"] > 0
    shapes = initializer_shapes(pruned)
    for name, shape in expected.items():
        assert shapes[name] == shape, (name, shapes[name])
    assert_close(model, pruned)
    again, details = prune(pruned, structured="channels", ratio=0.5)
    assert not details["changed"]
    assert again.SerializeToString() == pruned.SerializeToString()


def test_depthwise_group_attribute_follows():
    model, _ = case_depthwise()
    pruned, _ = prune(model, structured="channels", ratio=0.5)
    (node,) = [n for n in pruned.graph.node if n.name == "dw"]
    assert helper.get_attribute_value(node.attribute[[a.name for a in node.attribute].index("group")]) == 2


def test_ratio_zero_changes_nothing():
    model, _ = case_residual()
    pruned, details = prune(model, structured="channels", ratio=0.0)
    assert not details["changed"]
    assert pruned.SerializeToString() == model.SerializeToString()


def _unsafe(middle_nodes, inits, consumer_input):
    nodes = [_conv("c1", ["x", "w1"], "a")] + middle_nodes + [_conv("cs", [consumer_input, "ws"], "y")]
    return build(nodes, X, ["y"], dict({"w1": weight(4, 3, 1, 1, dead_rows=DEAD)}, **inits))


@pytest.mark.parametrize(
    "label, middle, inits, consumer, reason",
    [
        ("reshape", [helper.make_node("Reshape", ["a", "shape"], ["r"], name="mix")],
         {"shape": np.array([1, 2, 16, 8], np.int64), "ws": weight(3, 2, 1, 1)}, "r", "Reshape 'mix'"),
        ("gather", [helper.make_node("Gather", ["a", "idx"], ["g"], name="pick", axis=1)],
         {"idx": np.array([0, 2, 1, 3], np.int64), "ws": weight(3, 4, 1, 1)}, "g", "Gather 'pick'"),
        ("softmax", [helper.make_node("Softmax", ["a"], ["s"], name="soft", axis=1)], {"ws": weight(3, 4, 1, 1)}, "s", "Softmax 'soft'"),
        ("grouped", [], {"ws": weight(4, 2, 1, 1)}, "a", "grouped Conv"),
    ],
)
def test_unsafe_groups_are_skipped_with_reason(label, middle, inits, consumer, reason):
    model = _unsafe(middle, inits, consumer)
    if label == "grouped":
        model.graph.node[-1].attribute.append(helper.make_attribute("group", 2))
    pruned, details = prune(model, structured="channels", ratio=0.5)
    skipped = {entry["group"]: entry["reason"] for entry in details["skipped"]}
    assert reason in skipped["c1"], skipped
    assert not details["changed"]
    assert pruned.SerializeToString() == model.SerializeToString()


def test_group_reaching_a_graph_output_is_skipped_others_pruned():
    nodes = [_conv("c1", ["x", "w1"], "a"), helper.make_node("Relu", ["a"], ["r"], name="relu"), _conv("c2", ["r", "w2"], "y")]
    model = build(nodes, X, ["y", "a"], {"w1": weight(4, 3, 1, 1), "w2": weight(4, 4, 1, 1)})
    pruned, details = prune(model, structured="channels", ratio=0.5)
    reasons = {entry["group"]: entry["reason"] for entry in details["skipped"]}
    assert "graph output 'a'" in reasons["c1"] and "graph output 'y'" in reasons["c2"]
    assert not details["changed"]
