"""Constant nodes become weights before planning, so no cut carries them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

from graphopt.partition import partition
from graphopt.partition.constants import constants_as_initializers

# paddle2onnx-style: every Constant first in the node order, read far down the graph
_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 8] x) => (float[1, 8] y, float[2] shown) {
    scale = Constant <value = float[8] {1, 2, 3, 4, 5, 6, 7, 8}> ()
    shift = Constant <value_float = 0.5> ()
    axes = Constant <value_ints = [1]> ()
    shown = Constant <value = float[2] {9, 9}> ()
    a = Relu (x)
    b = Sigmoid (a)
    c = Tanh (b)
    d = Relu (c)
    e = Mul (d, scale)
    f = Add (e, shift)
    s = ReduceSum <keepdims = 1> (f, axes)
    y = Sub (f, s)
}
"""


def _model():
    model = onnx.parser.parse_model(_TEXT)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_constants_become_initializers_and_the_model_computes_the_same():
    model = _model()
    converted = constants_as_initializers(model)
    assert [n.op_type for n in model.graph.node].count("Constant") == 4  # the caller's model is untouched
    assert [n.op_type for n in converted.graph.node].count("Constant") == 1  # a graph output stays a node
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in converted.graph.initializer}
    assert initializers["shift"].dtype == np.float32 and initializers["shift"].shape == ()
    assert initializers["axes"].dtype == np.int64 and initializers["axes"].tolist() == [1]
    onnx.checker.check_model(converted, full_check=True)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    for want, got in zip(_run(model, x), _run(converted, x)):
        np.testing.assert_array_equal(got, want)
    assert constants_as_initializers(converted) is converted  # nothing left to move: the same model


def test_a_cut_carries_no_constant():
    result = partition(_model(), stages=2, by="macs", input_shapes={"x": [1, 8]})
    crossing = {value["name"] for stage in result.manifest["stages"][1:] for value in stage["inputs"]}
    assert crossing and not crossing & {"scale", "shift", "axes"}
    assert result.manifest["verification"]["ok"]
