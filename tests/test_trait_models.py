"""The trait models themselves: each carries the trait it is named for and runs in onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import torch_models
import trait_models


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _dims(model, index=0):
    return [d.dim_param or d.dim_value for d in model.graph.input[index].type.tensor_type.shape.dim]


@pytest.mark.parametrize("opset", [11, 12, 17])
def test_dynamic_cnn_runs_at_two_sizes_with_its_opset(opset):
    model = trait_models.dynamic_cnn(opset)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    assert _dims(model) == ["batch", 3, "height", "width"]
    for batch, size in ((1, 32), (3, 48)):
        assert _run(model, torch_models.cnn_feeds(batch, size))[0].shape == (batch, 10)
    ops = {node.op_type for node in model.graph.node}
    assert ("HardSwish" in ops) == (opset >= 14)


def test_yolo_like_outputs_pixel_boxes_beside_scores():
    model = trait_models.yolo_like()
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert {"Split", "Concat", "MaxPool", "Resize", "Sigmoid"} <= ops
    (output,) = _run(model, trait_models.yolo_feeds(2, 96))
    anchors = (96 // 8) ** 2 + (96 // 16) ** 2
    assert output.shape == (2, 4 + trait_models.YOLO_CLASSES, anchors)
    assert output[:, :4].max() > 10  # boxes in pixels
    assert 0 <= output[:, 4:].min() and output[:, 4:].max() <= 1  # scores


def test_crnn_holds_an_lstm_and_takes_any_width():
    model = trait_models.crnn_lstm()
    assert any(node.op_type == "LSTM" for node in model.graph.node)
    assert _run(model, trait_models.crnn_feeds(2, 80))[0].shape == (40, 2, 11)


def test_if_with_weights_keeps_weights_in_both_bodies():
    model = trait_models.if_with_weights()
    onnx.checker.check_model(model, full_check=True)
    branch = next(node for node in model.graph.node if node.op_type == "If")
    assert all(len(attribute.g.initializer) == 1 for attribute in branch.attribute)
    relu, tanh = (_run(model, trait_models.if_feeds(flag=flag))[0] for flag in (True, False))
    assert not np.allclose(relu, tanh)


def test_cond_model_exports_an_if():
    model = trait_models.cond_model()
    assert any(node.op_type == "If" for node in model.graph.node)
    assert _run(model, {"x": np.ones((2, 16), np.float32)})[0].shape == (2, 4)


def test_wrong_output_shape_is_what_the_checker_refuses():
    model = trait_models.with_wrong_output_shape(trait_models.crnn_lstm(), [1, "seqlen"])
    onnx.checker.check_model(model)  # structurally fine
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(model, full_check=True)
    assert _run(model, trait_models.crnn_feeds())[0].ndim == 3


def test_prequantized_models_hold_integer_ops():
    dynamic = trait_models.prequantized_dynamic(torch_models.cnn())
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= {node.op_type for node in dynamic.graph.node}
    qdq = trait_models.prequantized_qdq(torch_models.cnn(), torch_models.cnn_feeds(4))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in qdq.graph.node}


def test_encoder_with_outliers_has_outlier_layernorm_channels():
    model = trait_models.encoder_with_outliers()
    gammas = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("norm1.weight")]
    assert gammas and all(np.abs(g).max() > 8 * np.median(np.abs(g)) for g in gammas)
    assert _run(model, torch_models.transformer_feeds(1, 32))[0].shape == (1, 32, 64)
