"""Choosing concrete shapes for dynamic inputs (graphopt/verify/input_shapes.py, shape_hints.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt.errors import UsageError
from graphopt.verify.input_shapes import (
    candidate_shapes,
    choose_input_shapes,
    confirmed_shapes,
    freeze_input_shapes,
    run_shapes,
)
from graphopt.verify.shape_hints import total_stride
from trait_models import crnn_lstm, dynamic_cnn, dynamic_transformer, set_input_dims, yolo_like


def _shapes(chosen):
    return {name: shape.shape for name, shape in chosen.items()}


def test_image_input_gets_batch_one_and_a_stride_multiple_side():
    chosen = choose_input_shapes(dynamic_cnn(17))["image"]
    assert chosen.shape == (1, 3, 224, 224)
    assert "batch-like" in chosen.reasons[0] and chosen.reasons[1] == "fixed in the model"
    assert "image side" in chosen.reasons[2] and chosen.roles == ("batch", None, "image side", "image side")


def test_total_stride_follows_conv_and_pool_strides():
    assert total_stride(yolo_like(), "images") == 16  # the detector's deepest level
    assert total_stride(crnn_lstm(), "image") == 8  # MaxPool 2 then (4, 1): per node the largest axis stride


def test_side_is_rounded_up_to_a_large_total_stride():
    # Six stride-2 convs: total stride 64, so 224 is not a valid side; 256 is.
    nodes, size = [], 3
    for index in range(6):
        nodes.append(helper.make_node("Conv", [f"t{index}", f"w{index}"], [f"t{index + 1}"], strides=[2, 2], pads=[1, 1, 1, 1]))
    inits = [onnx.numpy_helper.from_array(np.ones((3, size, 3, 3), np.float32), f"w{i}") for i in range(6)]
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("t6", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert choose_input_shapes(model)["t0"].shape == (1, 3, 256, 256)


def test_symbols_shared_by_inputs_stay_equal_and_sequence_is_128():
    chosen = choose_input_shapes(dynamic_transformer())
    assert _shapes(chosen) == {"ids": (1, 128), "mask": (1, 128)}
    assert "as in 'ids'" in chosen["mask"].reasons[1]


def test_a_given_shape_settles_the_symbol_for_the_other_inputs():
    chosen = choose_input_shapes(dynamic_transformer(), {"ids": (2, 40)})
    assert _shapes(chosen) == {"ids": (2, 40), "mask": (2, 40)}
    assert "given shape of 'ids'" in chosen["mask"].reasons[1]


def test_unknown_dims_are_chosen_like_symbolic_ones():
    model = set_input_dims(dynamic_cnn(17), "image", [None, 3, None, None])
    assert choose_input_shapes(model)["image"].shape == (1, 3, 224, 224)


def test_metadata_image_size_wins_over_the_default():
    model = dynamic_cnn(17)
    onnx.helper.set_model_props(model, {"imgsz": "[320, 320]"})
    chosen = choose_input_shapes(model)["image"]
    assert chosen.shape == (1, 3, 320, 320) and "metadata" in chosen.reasons[2]


def test_constant_reshape_target_decides_a_dim():
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([-1, 12], np.int64), "target")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    chosen = choose_input_shapes(model)["x"]
    assert chosen.shape == (1, 12) and "Reshape" in chosen.reasons[1]


def test_confirmation_tries_the_next_candidate_when_onnxruntime_fails():
    model = dynamic_cnn(17)
    tried = []

    def runs(model, feeds, cache):
        tried.append(feeds["image"].shape[1:])
        return "too small" if len(tried) == 1 else None

    chosen = confirmed_shapes(model, runs=runs)["image"]
    assert tried == [(1, 3, 224, 224), (1, 3, 320, 320)]
    assert chosen.shape == (1, 3, 320, 320) and "earlier candidate" in chosen.reasons[2]


def test_confirmation_failing_everywhere_never_proposes_one_for_a_spatial_dim():
    with pytest.raises(UsageError) as error:
        confirmed_shapes(dynamic_cnn(17), runs=lambda model, feeds, cache: "boom")
    message = str(error.value)
    assert "input_shapes=" in message and "image=1,3,224,224" in message and "1,3,1,1" not in message


def test_confirmation_really_runs_onnxruntime():
    assert _shapes(confirmed_shapes(crnn_lstm())) == {"image": (1, 1, 16, 224)}


def test_fallback_candidates_differ_per_attempt():
    attempts = [_shapes(c)["ids"] for c in candidate_shapes(dynamic_transformer())]
    assert attempts == [(1, 128), (1, 64), (1, 32), (1, 16), (1, 256), (1, 512)]


def test_feeds_win_and_a_contradicting_given_shape_is_refused():
    model = dynamic_cnn(17)
    feeds = {"image": np.zeros((2, 1, 3, 64, 96), np.float32)}
    assert _shapes(run_shapes(model, {}, feeds, feeds_from="inputs")) == {"image": (1, 3, 64, 96)}
    with pytest.raises(UsageError, match=r"input_shapes= image=1,3,32,32 contradicts inputs="):
        run_shapes(model, {"image": (1, 3, 32, 32)}, feeds, feeds_from="inputs")


def test_freezing_writes_the_shapes_and_leaves_the_original_alone():
    model = dynamic_cnn(17)
    frozen = freeze_input_shapes(model, {"image": (1, 3, 64, 64)})
    assert [d.dim_value for d in frozen.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx.checker.check_model(frozen, full_check=True)


def test_value_info_of_the_next_tensor_decides_a_dim():
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Relu", ["xf"], ["y"])], "vi",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", "k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        value_info=[helper.make_tensor_value_info("xf", TensorProto.FLOAT, ["n", 24])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    chosen = choose_input_shapes(model)["x"]
    assert chosen.shape == (1, 24) and "value_info" in chosen.reasons[1]


def test_audio_input_gets_a_second_of_samples():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input_values"], ["y"])], "audio",
        [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert choose_input_shapes(model)["input_values"].shape == (1, 16000)


def test_a_rank_one_batch_input_stays_batch():
    graph = helper.make_graph(
        [helper.make_node("Cast", ["lengths"], ["y"], to=TensorProto.FLOAT)], "lengths",
        [helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert choose_input_shapes(model)["lengths"].shape == (1,)
