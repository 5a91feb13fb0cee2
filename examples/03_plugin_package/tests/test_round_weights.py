"""The plugin's own tests: the rounding itself, and the pass through graphopt's real pipeline."""

import io
import zipfile

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import graphopt
from graphopt_round_weights import round_mantissa


def test_round_mantissa_rounds_to_nearest_and_keeps_specials():
    values = np.array([1.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11, np.inf, -np.inf, np.nan, 0.0], dtype=np.float32)
    rounded = round_mantissa(values, 10)
    assert rounded[0] == 1.0
    assert rounded[1] == 1.0  # a tie goes to the even neighbour
    assert rounded[2] == np.float32(1.0 + 2**-9)  # a tie between odd and even: up to the even one
    assert np.isposinf(rounded[3]) and np.isneginf(rounded[4]) and np.isnan(rounded[5]) and rounded[6] == 0
    again = round_mantissa(rounded, 10)
    np.testing.assert_array_equal(again, rounded)  # already rounded: a fixed point


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = onh.from_array(rng.standard_normal((64, 128)).astype(np.float32) * 0.1, "w1")
    w2 = onh.from_array(rng.standard_normal((128, 10)).astype(np.float32) * 0.1, "w2")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w1"], ["h"]), oh.make_node("Relu", ["h"], ["r"]), oh.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 10])], [w1, w2],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def _zipped_size(model: onnx.ModelProto) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", model.SerializeToString())
    return len(buffer.getvalue())


def test_the_pass_is_registered_through_its_entry_point():
    from graphopt.registry import load_registry

    assert "round-weights" in load_registry().registry


def test_rounded_model_compresses_better_and_stays_within_budget():
    model = _mlp()
    result = graphopt.optimize(model, passes=["round-weights"])
    entry = result.report["passes"][0]
    assert entry["status"] == "accepted"
    assert entry["details"] == {"tensors_rounded": 2, "elements_rounded": 64 * 128 + 128 * 10}
    assert entry["verification"]["ok"]
    assert _zipped_size(result.model) < 0.8 * _zipped_size(model)
    again = graphopt.optimize(result.model, passes=["round-weights"])
    assert again.report["passes"][0]["status"] == "unchanged"


def test_a_bad_option_is_refused_before_any_work():
    with pytest.raises(graphopt.UsageError, match="mantissa_bits"):
        graphopt.optimize(_mlp(), passes=["round-weights"], options={"round-weights": {"mantissa_bits": 40}})
