"""graphopt/activations.py: intermediate tensors captured on real inputs, stacked over samples."""

import numpy as np
import onnx
import onnx.parser
import pytest

from graphopt.activations import capture_activations, expose_tensors
from graphopt.model import infer_model_shapes


def _model():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
            h = Relu(x)
            y = Neg(h)
        }''')
    return infer_model_shapes(model)


def test_captures_intermediates_inputs_and_outputs_per_sample():
    samples = {"x": np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)}
    captured = capture_activations(_model(), samples, ["h", "x", "y"])
    assert captured["h"].shape == (4, 2, 3)
    np.testing.assert_array_equal(captured["h"], np.maximum(samples["x"], 0))
    np.testing.assert_array_equal(captured["x"], samples["x"])
    np.testing.assert_array_equal(captured["y"], -np.maximum(samples["x"], 0))


def test_an_unknown_tensor_is_refused_by_name():
    with pytest.raises(KeyError, match="nope"):
        expose_tensors(_model(), ["nope"])


def _with_contrib_op():
    """x -> com.microsoft.Gelu -> Neg: ONNX's inference has no schema to type Gelu's output."""
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
        g (float[2,3] x) => (float[2,3] y) {
            h = com.microsoft.Gelu(x)
            y = Neg(h)
        }''')
    return infer_model_shapes(model)


def test_an_untyped_intermediate_of_a_contrib_op_is_captured_as_onnxruntime_types_it():
    model = _with_contrib_op()
    assert "h" not in {value.name for value in model.graph.value_info if value.type.tensor_type.elem_type}
    samples = {"x": np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)}
    captured = capture_activations(model, samples, ["h"])
    np.testing.assert_allclose(captured["h"], -capture_activations(model, samples, ["y"])["y"])
    assert captured["h"].dtype == np.float32


def test_an_input_is_not_exposed_as_an_output():
    with pytest.raises(KeyError, match="input or an initializer"):
        expose_tensors(_model(), ["x"])
