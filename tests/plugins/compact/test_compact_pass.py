"""graphopt_plugins/compact: shorter names and no default attributes, the same model in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch_models
import trait_models
from onnx import helper, numpy_helper

import graphopt


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _compact(model, **options):
    result = graphopt.optimize(model, passes=["compact"], options={"compact": options} if options else None)
    onnx.checker.check_model(result.model, full_check=True)
    return result, result.report["passes"][0]


def _long_named_net() -> onnx.ModelProto:
    """Conv (group=1 written out, strides 2) → Gemm (alpha=1.0 written out, transB=1) → Relu, exporter-style names."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "backbone.stem.conv.weight"),
               numpy_helper.from_array(rng.standard_normal((5, 36)).astype(np.float32), "head.classifier.fc.weight"),
               numpy_helper.from_array(np.array([1, 36], np.int64), "/head/Reshape_shape_constant")]
    nodes = [helper.make_node("Conv", ["image", "backbone.stem.conv.weight"], ["/backbone/stem/conv/Conv_output_0"],
                              name="/backbone/stem/conv/Conv", group=1, strides=[2, 2]),
             helper.make_node("Reshape", ["/backbone/stem/conv/Conv_output_0", "/head/Reshape_shape_constant"],
                              ["/head/Reshape_output_0"], name="/head/Reshape"),
             helper.make_node("Gemm", ["/head/Reshape_output_0", "head.classifier.fc.weight"], ["/head/classifier/fc/Gemm_output_0"],
                              name="/head/classifier/fc/Gemm", alpha=1.0, transB=1),
             helper.make_node("Relu", ["/head/classifier/fc/Gemm_output_0"], ["logits"], name="/head/Relu")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 7, 7])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 5])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_names_shorten_and_default_attributes_go_while_the_interface_and_outputs_stay():
    model = _long_named_net()
    result, entry = _compact(model)
    compacted = result.model
    assert entry["status"] == "accepted"
    assert entry["details"] == {"node_names_dropped": 4, "tensors_renamed": 6, "default_attributes_dropped": 2}
    assert [v.name for v in compacted.graph.input] == ["image"] and [v.name for v in compacted.graph.output] == ["logits"]
    assert all(node.name == "" for node in compacted.graph.node)
    inner = {name for node in compacted.graph.node for name in [*node.input, *node.output]} - {"image", "logits"}
    assert inner == {f"t{i}" for i in range(6)}
    attributes = {node.op_type: {a.name: helper.get_attribute_value(a) for a in node.attribute} for node in compacted.graph.node}
    assert attributes["Conv"] == {"strides": [2, 2]} and attributes["Gemm"] == {"transB": 1}
    assert compacted.ByteSize() < model.ByteSize() - 250
    feeds = {"image": np.random.default_rng(1).standard_normal((1, 3, 7, 7)).astype(np.float32)}
    np.testing.assert_array_equal(_run(compacted, feeds)[0], _run(model, feeds)[0])
    assert model.graph.initializer[0].name == "backbone.stem.conv.weight"  # the caller's model is untouched
    again, second = _compact(compacted)
    assert second["status"] == "unchanged" and again.model.ByteSize() == compacted.ByteSize()


def test_a_short_name_taken_by_the_interface_is_skipped_and_kept_options_change_nothing():
    model = _long_named_net()
    model.graph.output[0].name = "t1"
    model.graph.node[-1].output[0] = "t1"
    compacted = _compact(model)[0].model
    names = [name for node in compacted.graph.node for name in node.output]
    assert names.count("t1") == 1 and compacted.graph.node[-1].output[0] == "t1" and "t6" in names
    _, entry = _compact(_long_named_net(), keep_node_names=True, keep_tensor_names=True, keep_default_attributes=True)
    assert entry["status"] == "unchanged"


def test_if_bodies_rename_with_the_outer_tensors_they_read():
    model = trait_models.if_with_weights(width=16)
    compacted = _compact(model)[0].model
    node = next(n for n in compacted.graph.node if n.op_type == "If")
    for attribute in node.attribute:
        read = {name for body_node in attribute.g.node for name in body_node.input}
        assert all(name.startswith("t") for name in read) and all(body_node.name == "" for body_node in attribute.g.node)
    for flag in (True, False):
        feeds = trait_models.if_feeds(width=16, flag=flag)
        np.testing.assert_array_equal(_run(compacted, feeds)[0], _run(model, feeds)[0])


def test_fp16_then_compact_brings_the_torch_cnn_under_51_percent_of_its_float32_bytes():
    base = graphopt.optimize(torch_models.cnn("torchscript", 17), passes=["cleanup", "fuse"]).model
    half = graphopt.optimize(base, passes=["fp16"]).model
    shipped = graphopt.optimize(base, passes=["fp16", "compact"]).model
    onnx.checker.check_model(shipped, full_check=True)
    assert half.ByteSize() > 0.55 * base.ByteSize()  # float16 weights alone: the names keep it above
    assert shipped.ByteSize() <= 0.51 * base.ByteSize()
    sample = torch_models.cnn_feeds(seed=11)
    expected, got = (np.ravel(_run(m, sample)[0]).astype(np.float64) for m in (base, shipped))
    assert expected @ got / (np.linalg.norm(expected) * np.linalg.norm(got)) >= 0.999
