"""graphopt_plugins/quantize/latency.py: the per-layer models timed float vs int8, and the timer."""

from __future__ import annotations

import onnx
import pytest
from quantize_support import ort_optimized_ops, run

from graphopt_plugins.quantize.latency import interleaved_medians, layer_models
from graphopt_plugins.quantize.rewrite import apply_static
from graphopt_plugins.quantize.targets import find_targets
from test_planner import _conv_chain



def _quantize(graph):
    targets, _ = find_targets(graph, ["Conv"], [], [])
    ranges = {name: (-3.0, 3.0) for name in ("x", "a0", "a1", "c1")}
    apply_static(graph, targets, ranges, signed=False)
    graph.cleanup().toposort(mode="nodes")


@pytest.mark.parametrize("integer_in, integer_out", [(False, False), (True, True), (True, False)])
def test_layer_models_keep_the_boundaries_the_layer_will_have(integer_in, integer_out):
    model = _conv_chain(layers=3)
    pair = layer_models(model, 2, "a1", (1, 16, 10, 10), _quantize, integer_in, integer_out)
    float_model, quantized, float_feed, quantized_feed = pair
    elem = lambda value: value.type.tensor_type.elem_type  # noqa: E731
    assert elem(quantized.graph.input[0]) == (onnx.TensorProto.UINT8 if integer_in else onnx.TensorProto.FLOAT)
    assert elem(quantized.graph.output[0]) == (onnx.TensorProto.UINT8 if integer_out else onnx.TensorProto.FLOAT)
    assert [n.op_type for n in float_model.graph.node] == ["Conv", "Relu"]
    run(float_model, float_feed)
    run(quantized, quantized_feed, optimize=True)
    assert ort_optimized_ops(quantized)["QLinearConv"] == 1
    medians = interleaved_medians([float_model, quantized], [float_feed, quantized_feed], budget_seconds=0.02, rounds=1)
    assert len(medians) == 2 and all(m > 0 for m in medians)


def test_a_weight_read_from_elsewhere_than_a_constant_gives_no_layer_model():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x, float[4, 4, 1, 1] w) => (float[1, 4, 6, 6] y) { y = Conv(x, w) }''')
    assert layer_models(model, 0, None, (1, 4, 6, 6), _quantize, False, False) is None
