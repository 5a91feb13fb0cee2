"""graphopt.weightless: the checker and shape inference run without the weights, and give
what they give on the whole model.

Models are built here with onnx.helper: float weights big enough to be left out, an int64
shape that data propagation must still read, a body that reads an outer weight.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import InputError
from graphopt.model_io import inferred_and_checked
from graphopt.proto_walk import copy_model
from graphopt.weightless import MOVED_AT_BYTES, skeleton_of

ROWS = 64  # a 64x64 float32 weight is 16 KiB, well past MOVED_AT_BYTES


def weights_model(*, ir_version: int = 8, overridable: bool = False) -> onnx.ModelProto:
    """x [1, 64] → MatMul w → Add b → Reshape to [8, 8] (shape from an int64 initializer) → If
    whose branches add the outer weight `v` or not; a large int64 table read by a Gather."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((ROWS, ROWS)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(ROWS).astype(np.float32), "b"),  # 256 bytes: stays
        numpy_helper.from_array(np.array([8, 8], np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float16).astype(np.float32), "v"),
        numpy_helper.from_array(np.arange(2048, dtype=np.int64), "table"),  # 16 KiB, but int64: stays
        numpy_helper.from_array(rng.standard_normal((ROWS, ROWS)).astype(np.float16), "w16"),
    ]
    then_branch = helper.make_graph([helper.make_node("Add", ["r", "v"], ["t_out"])], "then", [],
                                    [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [8, 8])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["r"], ["e_out"])], "else", [],
                                    [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [8, 8])])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Reshape", ["hb", "shape"], ["r"]),
        helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Gather", ["table", "ids"], ["picked"]),
        helper.make_node("Cast", ["w16"], ["w16f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w16f"], ["z"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ROWS]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
              helper.make_tensor_value_info("ids", TensorProto.INT64, [3])]
    if ir_version < 4:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers]
    elif overridable:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [ROWS, ROWS]))
    outputs = [helper.make_tensor_value_info(name, elem, shape)
               for name, elem, shape in (("y", TensorProto.FLOAT, [8, 8]), ("picked", TensorProto.INT64, [3]),
                                         ("z", TensorProto.FLOAT, [1, ROWS]))]
    graph = helper.make_graph(nodes, "weights", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = ir_version
    return model


@pytest.mark.parametrize("case", ["plain", "overridable", "ir3"])
@pytest.mark.parametrize("value_info", [True, False])
def test_inferred_and_checked_on_the_skeleton_equals_inference_on_the_whole_model(case, value_info):
    model = weights_model(ir_version=3 if case == "ir3" else 8, overridable=case == "overridable")
    expected = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)

    skeleton = skeleton_of(model)
    left_out = {t.name for t in model.graph.initializer} - {t.name for t in skeleton.model.graph.initializer}
    assert left_out == {"w", "w16"}  # not `b` (small), `shape` or `table` (int64), `v` (small)

    inferred, size = inferred_and_checked(copy_model(model), value_info=value_info)
    assert inferred == expected
    assert [t.name for t in inferred.graph.initializer] == [t.name for t in model.graph.initializer]
    assert {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}["r"] == [8, 8]
    stored = copy_model(inferred)
    if not value_info:
        del stored.graph.value_info[:]
    assert size == stored.ByteSize()


def test_a_weight_whose_bytes_do_not_fit_its_shape_is_still_named_by_the_checker():
    model = weights_model()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.raw_data = weight.raw_data[: MOVED_AT_BYTES + 4]
    assert "w" in {t.name for t in skeleton_of(model).model.graph.initializer}
    with pytest.raises(InputError, match="raw_data size"):
        inferred_and_checked(model)


def test_an_invalid_model_is_refused_with_the_checker_s_reason():
    model = weights_model()
    model.graph.node[1].input[1] = "ids"  # Add(float, int64): strict inference refuses the types
    with pytest.raises(InputError, match="invalid model"):
        inferred_and_checked(model)


def test_skeleton_of_a_model_without_large_weights_is_the_model_itself():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    assert skeleton_of(model).model is model


@pytest.mark.parametrize("value_info", [True, False])
def test_the_input_s_inference_on_the_skeleton_equals_inference_on_the_whole_model(value_info):
    from graphopt.model_io import inferred_with_size

    model = weights_model()
    given = copy_model(model)
    inferred, size = inferred_with_size(given, data=given.SerializeToString(), value_info=value_info)
    assert given == model  # the caller's model is not the one filled in
    assert inferred == onnx.shape_inference.infer_shapes(model, data_prop=True)
    stored = copy_model(inferred)
    if not value_info:
        del stored.graph.value_info[:]
    assert size == stored.ByteSize()
