"""Outputs a selection makes (ArgMax, TopK, NonMaxSuppression) are judged on what it selects from
(graphopt/selection_head.py): the head is set aside for the passes and put back unchanged."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt.activations import expose_tensors
from graphopt.cli import main
from graphopt.model import infer_model_shapes
from graphopt.selection_head import attach_head, split_head
from graphopt.verify.metrics import output_metrics

RNG = np.random.default_rng(0)


def _segmenter(opset: int = 13) -> onnx.ModelProto:
    """image -> Conv -> Relu -> Conv (21 classes) = logits -> ArgMax(axis 1) -> Unsqueeze = mask (int64)."""
    w1 = numpy_helper.from_array((RNG.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((RNG.standard_normal((21, 16, 3, 3)) * 0.2).astype(np.float32), "w2")
    unsqueeze = (helper.make_node("Unsqueeze", ["ids"], ["mask"], axes=[1]) if opset < 13
                 else helper.make_node("Unsqueeze", ["ids", "axis"], ["mask"]))
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["logits"], pads=[1, 1, 1, 1]),
             helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0), unsqueeze]
    initializers = [w1, w2] + ([numpy_helper.from_array(np.array([1], np.int64), "axis")] if opset >= 13 else [])
    graph = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 1, 32, 32])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, feeds, names=None):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def test_the_head_is_set_aside_and_put_back_in_the_trunks_opset():
    model = infer_model_shapes(_segmenter(opset=11))
    trunk, head = split_head(model)
    assert head is not None and head.selections == ["ArgMax"] and [r.name for r in head.reads] == ["logits"]
    assert [o.name for o in trunk.graph.output] == ["logits"] and {n.op_type for n in trunk.graph.node} == {"Conv", "Relu"}
    converted = onnx.version_converter.convert_version(trunk, 13)  # as the opset pass moves a model for quantize
    whole = attach_head(converted, head)
    onnx.checker.check_model(whole, full_check=True)
    assert whole.graph.node[-1].op_type == "Unsqueeze" and len(whole.graph.node[-1].input) == 2  # axes an input at 13
    assert "ArgMax" in [n.op_type for n in whole.graph.node]
    feeds = {"image": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    np.testing.assert_array_equal(_run(whole, feeds)[0], _run(model, feeds)[0])


def test_a_head_that_holds_weights_is_not_set_aside():
    model = _segmenter()
    weight = numpy_helper.from_array(np.ones((32, 4), np.float32), "w3")
    model.graph.initializer.append(weight)
    model.graph.node.append(helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT))
    model.graph.node.append(helper.make_node("MatMul", ["maskf", "w3"], ["projected"]))
    model.graph.output.append(helper.make_tensor_value_info("projected", TensorProto.FLOAT, [1, 1, 32, 4]))
    assert split_head(infer_model_shapes(model))[1] is None


def test_a_selection_straight_off_an_input_is_not_set_aside():
    graph = helper.make_graph([helper.make_node("ArgMax", ["x"], ["ids"], axis=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 1])])
    assert split_head(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))[1] is None


def test_prune_on_a_segmenter_is_judged_on_its_logits(tmp_path, capsys):
    path, report_path, original = tmp_path / "seg.onnx", tmp_path / "r.json", _segmenter()
    onnx.save(original, path)
    assert main(["optimize", str(path), "--passes", "prune", "--report", str(report_path)]) == 0
    assert "outputs mask come through ArgMax: lossy passes were judged on 'logits'" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    head = report["verification"]["selection_head"]
    assert head["judged_on"] == ["logits"] and 0 < head["agreement"]["mask"]["equal_fraction"] <= 1
    # Judged on nothing but the class ids, prune went to full strength; on the logits it keeps the budget
    assert report["passes"][-1]["details"]["strength"] < 1
    result = onnx.load(tmp_path / "seg.opt.onnx")
    onnx.checker.check_model(result, full_check=True)
    assert [o.name for o in result.graph.output] == ["mask"] and result.graph.node[-2].op_type == "ArgMax"
    feeds = {"image": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    logits = [_run(expose_tensors(infer_model_shapes(m), ["logits"]), feeds, ["logits"])[0] for m in (original, result)]
    assert output_metrics(*logits)["cosine"] >= 0.99


def test_a_detector_ending_in_nms_is_quantized_and_keeps_its_nms(tmp_path, capsys):
    w1 = numpy_helper.from_array((RNG.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    wb = numpy_helper.from_array((RNG.standard_normal((4, 16, 1, 1)) * 0.2).astype(np.float32), "wb")
    ws = numpy_helper.from_array((RNG.standard_normal((2, 16, 1, 1)) * 0.5).astype(np.float32), "ws")
    const = lambda name, value: numpy_helper.from_array(np.array(value), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "wb"], ["b"]), helper.make_node("Conv", ["r", "ws"], ["s"]),
             helper.make_node("Reshape", ["b", "shape4"], ["b3"]), helper.make_node("Transpose", ["b3"], ["boxes"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["s"], ["s1"]), helper.make_node("Reshape", ["s1", "shape2"], ["scores"]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "top", "iou", "least"], ["selected"])]
    initializers = [w1, wb, ws, const("shape4", np.array([1, 4, -1], np.int64)), const("shape2", np.array([1, 2, -1], np.int64)),
                    const("top", np.array([10], np.int64)), const("iou", np.array([0.5], np.float32)),
                    const("least", np.array([0.3], np.float32))]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("selected", TensorProto.INT64, ["found", 3])], initializers)
    path, report_path = tmp_path / "det.onnx", tmp_path / "r.json"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert main(["optimize", str(path), "--passes", "quantize", "--report", str(report_path)]) == 0
    head = json.loads(report_path.read_text())["verification"]["selection_head"]
    assert head["selections"] == ["NonMaxSuppression"] and sorted(head["judged_on"]) == ["boxes", "scores"]
    result = onnx.load(tmp_path / "det.opt.onnx")
    onnx.checker.check_model(result, full_check=True)
    assert result.graph.node[-1].op_type == "NonMaxSuppression" and [o.name for o in result.graph.output] == ["selected"]
