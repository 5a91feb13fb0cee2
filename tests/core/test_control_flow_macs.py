"""MACs inside If, Loop and Scan bodies: what one run can cost, never silently zero."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.shaped_summary import freeze_input_shapes, infer_model_shapes
from graphopt.summary import summarize
from trait_models import if_with_weights

WIDTH = 8


def _weight(name, rows=WIDTH, cols=WIDTH):
    return numpy_helper.from_array(np.ones((rows, cols), np.float32), name)


def test_if_counts_its_costlier_branch_and_the_outer_matmul():
    model = infer_model_shapes(freeze_input_shapes(if_with_weights(width=64), {"x": (2, 64), "flag": ()}))
    summary = summarize(model)
    # outer MatMul + one branch (two MatMuls): both branches cost the same here.
    assert summary["macs"] == 3 * 2 * 64 * 64
    assert summary["macs_unknown"] == {}


def _loop_model(trip_count: onnx.TensorProto | None):
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w"], ["h_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, WIDTH])],
    )
    initializers = [_weight("w"), numpy_helper.from_array(np.array(True), "cond")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])]
    if trip_count is None:
        inputs.append(helper.make_tensor_value_info("steps", TensorProto.INT64, []))
    else:
        initializers.append(trip_count)
    graph = helper.make_graph([helper.make_node("Loop", ["steps", "cond", "x"], ["y"], body=body)], "loop", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])], initializer=initializers)
    return infer_model_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_loop_with_a_constant_trip_count_multiplies_its_body():
    summary = summarize(_loop_model(numpy_helper.from_array(np.array(5, np.int64), "steps")))
    assert summary["macs"] == 5 * WIDTH * WIDTH
    assert summary["macs_unknown"] == {}


def test_loop_with_a_runtime_trip_count_counts_one_step_and_says_so():
    summary = summarize(_loop_model(None))
    assert summary["macs"] == WIDTH * WIDTH
    assert summary["macs_unknown"] == {"Loop": 1}


def test_scan_multiplies_its_body_by_the_scanned_length():
    steps = 6
    body = helper.make_graph(
        [helper.make_node("MatMul", ["row", "w"], ["projected"]), helper.make_node("Add", ["acc_in", "projected"], ["acc_out"]),
         helper.make_node("Identity", ["projected"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, WIDTH]), helper.make_tensor_value_info("row", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, WIDTH]), helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [1, WIDTH])],
    )
    graph = helper.make_graph(
        [helper.make_node("Scan", ["init", "xs"], ["total", "ys"], body=body, num_scan_inputs=1)], "scan",
        [helper.make_tensor_value_info("init", TensorProto.FLOAT, [1, WIDTH]), helper.make_tensor_value_info("xs", TensorProto.FLOAT, [steps, 1, WIDTH])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, WIDTH]), helper.make_tensor_value_info("ys", TensorProto.FLOAT, [steps, 1, WIDTH])],
        initializer=[_weight("w")])
    model = infer_model_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    summary = summarize(model)
    assert summary["macs"] == steps * WIDTH * WIDTH
    assert summary["macs_unknown"] == {}
