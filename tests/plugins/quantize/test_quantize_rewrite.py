"""graphopt_plugins/quantize/rewrite.py: static QDQ, dynamic and weight-only rewrites, per op and axis."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
import graphopt.convert
from quantize_support import (calibration_for, initializer, op_counts, ort_optimized_ops, quantize, quantize_and_check,
                              single_op_model)


def _dq_axis_of_weight(model: onnx.ModelProto) -> int:
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w_q"))
    return next(a.i for a in node.attribute if a.name == "axis")


def test_static_conv_relu_fuses_to_qlinearconv_with_int32_bias():
    model = single_op_model("Conv", relu=True)
    quantized, stats = quantize_and_check(model)
    assert stats["quantized"] == 1
    ops = op_counts(quantized)
    assert ops["Relu"] == 0, "the Relu is absorbed by the output's uint8 clamp"
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 4  # x, y; and x, y, w, b
    (weight,) = initializer(quantized, "w_q", onnx.TensorProto.INT8)
    assert list(weight.dims) == [32, 16, 3, 3] and _dq_axis_of_weight(quantized) == 0
    (bias,) = initializer(quantized, "b_q", onnx.TensorProto.INT32)
    (bias_scale,) = initializer(quantized, "b_scale")
    assert list(bias.dims) == [32] and list(bias_scale.dims) == [32]
    # The output's zero point is 0: that clamp at 0 is the absorbed Relu.
    output_q = next(n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] != "x")
    zero = next(t for t in quantized.graph.initializer if t.name == output_q.input[2])
    assert onnx.numpy_helper.to_array(zero) == 0
    assert ort_optimized_ops(quantized)["QLinearConv"] == 1


@pytest.mark.parametrize("trans_b, axis", [(1, 0), (0, 1)])
def test_static_gemm_weight_axis_follows_trans_b(trans_b, axis):
    model = single_op_model("Gemm", trans_b=trans_b)
    quantized, _ = quantize_and_check(model, mode="static")
    assert _dq_axis_of_weight(quantized) == axis
    assert ort_optimized_ops(quantized)["QGemm"] == 1


def test_static_matmul_per_column_weights_fuse_to_qlinearmatmul():
    model = single_op_model("MatMul")
    quantized, _ = quantize_and_check(model, mode="static")
    assert _dq_axis_of_weight(quantized) == 1
    (scale,) = initializer(quantized, "w_scale")
    assert list(scale.dims) == [32]
    assert ort_optimized_ops(quantized)["QLinearMatMul"] == 1


def test_static_conv_transpose_uses_axis_1():
    model = single_op_model("ConvTranspose", channels=24)
    quantized, _ = quantize_and_check(model)
    assert _dq_axis_of_weight(quantized) == 1
    (scale,) = initializer(quantized, "w_scale")
    assert list(scale.dims) == [24]


def test_int8_symmetric_activations_have_zero_zero_points():
    model = single_op_model("Conv", relu=True)
    quantized, _ = quantize_and_check(model, activations="int8")
    assert op_counts(quantized)["Relu"] == 1, "a symmetric int8 clamp is not a Relu; it stays"
    for node in (n for n in quantized.graph.node if n.op_type == "QuantizeLinear"):
        zero = next(t for t in quantized.graph.initializer if t.name == node.input[2])
        assert zero.data_type == onnx.TensorProto.INT8 and onnx.numpy_helper.to_array(zero) == 0


def test_dynamic_matmul_uses_matmulinteger_and_leaves_conv_alone():
    model = single_op_model("MatMul")
    quantized, stats = quantize_and_check(model, mode="dynamic")
    ops = op_counts(quantized)
    assert ops["MatMulInteger"] == 1 and ops["DynamicQuantizeLinear"] == 1 and ops["MatMul"] == 0
    assert ort_optimized_ops(quantized)["DynamicQuantizeMatMul"] == 1
    conv = single_op_model("Conv")
    _, conv_stats, entry = quantize(conv, calibration_for(conv), mode="dynamic", latency="off")
    assert entry["status"] == "unchanged" and conv_stats["quantized"] == 0


def test_dynamic_gemm_keeps_its_bias():
    model = single_op_model("Gemm", trans_b=1)
    quantized, _ = quantize_and_check(model, mode="dynamic")
    ops = op_counts(quantized)
    assert ops["Gemm"] == 0 and ops["MatMulInteger"] == 1 and ops["Add"] == 1


def test_weight_only_int8_stores_int8_weights_without_activation_quantization():
    model = single_op_model("Conv", channels=64)
    quantized, _ = quantize_and_check(model, mode="weight-only")
    ops = op_counts(quantized)
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 1
    (weight,) = initializer(quantized, "w_q", onnx.TensorProto.INT8)
    assert quantized.ByteSize() < 0.4 * model.ByteSize()


def test_weight_only_int4_blocks_along_the_reduction_axis():
    model = single_op_model("MatMul", opset=21, channels=64)
    quantized, _ = quantize_and_check(model, mode="weight-only", weight_bits=4, block_size=32, cosine=0.98)
    node = next(n for n in quantized.graph.node if n.op_type == "DequantizeLinear")
    attrs = {a.name: a.i for a in node.attribute}
    assert attrs == {"axis": 0, "block_size": 32}
    (weight,) = initializer(quantized, "w_q", onnx.TensorProto.INT4)
    (scale,) = initializer(quantized, "w_scale")
    assert list(weight.dims) == [64, 64] and list(scale.dims) == [2, 64]
    assert ort_optimized_ops(quantized)["MatMulNBits"] == 1
    assert quantized.ByteSize() < 0.27 * model.ByteSize()


def test_int4_below_opset_21_converts_the_model_first():
    model = single_op_model("MatMul", opset=17)
    result = graphopt.optimize(model, passes=["quantize"], options={"quantize": {"mode": "weight-only", "weight_bits": 4}},
                               calibration=calibration_for(model), verify="off")
    conversion, entry = result.report["passes"]
    assert conversion["name"] == "opset" and conversion["implicit"]["needs_opset"] == 21
    assert entry["status"] == "accepted"
    assert next(o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx")) == 21


def test_int4_below_opset_21_is_refused_by_the_pass_itself():
    """Outside a pipeline nothing converts: the pass says what it needs."""
    from graphopt.errors import PreconditionError
    from graphopt_plugins.quantize.quantize_pass import Quantize

    model = single_op_model("MatMul", opset=17)
    pass_ = Quantize(Quantize.Options(mode="weight-only", weight_bits=4))
    with pytest.raises(PreconditionError, match="opset >= 21"):
        pass_.run(graphopt.convert.import_graph(model), graphopt.PassContext(opset=17, model=model))


def test_activation_by_activation_matmul_is_not_quantized():
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 8] a, float[8, 4] b) => (float[4, 4] y) { y = MatMul(a, b) }''')
    rng = np.random.default_rng(0)
    calibration = {"a": rng.standard_normal((4, 4, 8)).astype(np.float32), "b": rng.standard_normal((4, 8, 4)).astype(np.float32)}
    quantized, stats, entry = quantize(model, calibration, latency="off")
    assert entry["status"] == "unchanged" and stats["quantized"] == 0
    assert "activation x activation" in stats["skipped"][0]["reason"]


@pytest.mark.parametrize("op, kernel, weight_zero", [("Conv", "QLinearConv", False), ("Gemm", "QGemm", True)])
def test_all_zero_zero_points_are_left_out_where_the_kernel_fuses_without_them(op, kernel, weight_zero):
    # A per-channel zero vector weighs as much as the int32 bias (or the int8 weight's channels);
    # QGemm's fusion wants the weight's, QLinearConv's does not.
    quantized, _ = quantize_and_check(single_op_model(op), mode="static")
    producers = {out: node for node in quantized.graph.node for out in node.output}
    (layer,) = [node for node in quantized.graph.node if node.op_type == op]
    weight_dq, bias_dq = producers[layer.input[1]], producers[layer.input[2]]
    assert len(bias_dq.input) == 2
    assert (len(weight_dq.input) == 3) == weight_zero
    assert ort_optimized_ops(quantized)[kernel] == 1
