"""graphopt/latency/energy.py: MACs by dtype, weight bytes, peak activation bytes, the energy proxy — by hand."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphopt
from graphopt.latency.energy import DEFAULT_TABLE, estimate
from graphopt.model import infer_model_shapes
from graphopt.summary import format_comparison, summarize


def _two_layers(int8: bool) -> onnx.ModelProto:
    """x[1,8] -> MatMul W1[8,16] -> Relu -> MatMul W2[16,4] -> y; with `int8`, both MatMuls read QDQ pairs."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((16, 4)).astype(np.float32)
    nodes, inits = [], []
    if not int8:
        inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("MatMul", ["r", "w2"], ["y"])]
    else:
        scale, zero = numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")
        inits = [numpy_helper.from_array(np.clip(np.round(w / 0.05), -127, 127).astype(np.int8), name)
                 for w, name in ((w1, "q1"), (w2, "q2"))] + [scale, zero]
        for source, target, weight, out in (("x", "xd", "q1", "h"), ("r", "rd", "q2", "y")):
            nodes += [helper.make_node("QuantizeLinear", [source, "s", "z"], [target + "q"]),
                      helper.make_node("DequantizeLinear", [target + "q", "s", "z"], [target]),
                      helper.make_node("DequantizeLinear", [weight, "s", "z"], [weight + "d"]),
                      helper.make_node("MatMul", [target, weight + "d"], [out])]
            if out == "h":
                nodes.append(helper.make_node("Relu", ["h"], ["r"]))
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return infer_model_shapes(model)


def test_the_float_model_figures_computed_by_hand():
    figures = estimate(_two_layers(int8=False))
    macs = 8 * 16 + 16 * 4  # 192 multiply-accumulates
    assert figures["macs_by_dtype"] == {"fp32": macs, "fp16": 0, "int8": 0, "int4": 0}
    assert figures["weight_bytes"] == macs * 4  # 192 float weights
    # x (32 B) + h (64 B) while the first MatMul writes h; then h + r (64 + 64) while Relu runs: 128.
    assert figures["peak_activation_bytes"] == 128 and figures["activations_unsized"] == 0
    assert figures["energy_proxy"]["compute_pj"] == pytest.approx(192 * (3.7 + 0.9))  # 883.2
    assert figures["energy_proxy"]["weight_dram_pj"] == pytest.approx(192 * 640.0)  # one 32-bit word per weight
    assert figures["energy_proxy"]["total_pj"] == pytest.approx(883.2 + 122880.0)
    assert "relative proxy" in figures["energy_proxy"]["note"]


def test_the_int8_model_figures_computed_by_hand_and_cheaper():
    figures = estimate(_two_layers(int8=True))
    assert figures["macs_by_dtype"] == {"fp32": 0, "fp16": 0, "int8": 192, "int4": 0}
    assert figures["weight_bytes"] == 192 + 4 + 1  # int8 weights, the scale and the zero point
    assert figures["energy_proxy"]["compute_pj"] == pytest.approx(192 * (0.2 + 0.03))
    assert figures["energy_proxy"]["weight_dram_pj"] == pytest.approx(197 / 4 * 640.0)
    assert figures["energy_proxy"]["total_pj"] < estimate(_two_layers(int8=False))["energy_proxy"]["total_pj"]


def test_the_table_can_be_overridden():
    figures = estimate(_two_layers(int8=False), table={"dram_32bit_word": 0.0, "fp32_mult": 1.0, "fp32_add": 0.0})
    assert figures["energy_proxy"]["total_pj"] == pytest.approx(192.0)
    assert DEFAULT_TABLE["dram_32bit_word"] == 640.0  # the default is untouched


def test_the_summary_and_the_terminal_table_carry_it():
    before, after = summarize(_two_layers(int8=False)), summarize(_two_layers(int8=True))
    assert before["macs_by_dtype"]["fp32"] == 192 and after["macs_by_dtype"]["int8"] == 192
    table = format_comparison(before, after)
    assert "MACs int8" in table and "peak act. bytes" in table and "energy* pJ" in table
    assert "relative energy proxy" in table and "not joules" in table


def test_the_report_has_it_for_input_and_output():
    report = graphopt.optimize(_two_layers(int8=False), passes=["cleanup"]).report
    assert report["input"]["energy_proxy"]["total_pj"] == pytest.approx(883.2 + 122880.0)
    assert report["output"]["peak_activation_bytes"] == 128


def test_a_model_with_a_dynamic_batch_is_priced_at_the_shapes_graphopt_chose():
    # Declared ["batch", 8]: without the chosen shape every MAC and activation would read zero.
    model = _two_layers(int8=False)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    report = graphopt.optimize(model, passes=["cleanup"]).report
    for side in ("input", "output"):
        assert report[side]["macs_by_dtype"]["fp32"] == 8 * 16 + 16 * 4
        assert report[side]["energy_proxy"]["total_pj"] == pytest.approx(883.2 + 122880.0)
        assert report[side]["peak_activation_bytes"] == 128


def test_figures_too_wide_for_the_column_stay_apart():
    before, after = summarize(_two_layers(int8=False)), summarize(_two_layers(int8=True))
    before["energy_proxy"]["total_pj"], after["energy_proxy"]["total_pj"] = 5_037_853_408_123, 10_784_621_318_456
    row = next(line for line in format_comparison(before, after).splitlines() if line.startswith("energy* pJ"))
    assert row.split()[2:4] == ["5,037,853,408,123", "10,784,621,318,456"]


def _paddle_style_cnn(path) -> None:
    """x[N,3,H,W] -> Conv (3x3, 16) -> Relu -> Conv (3x3, 16) -> GlobalAveragePool -> Flatten -> MatMul [16,64];
    the Conv weights in Constant nodes, as paddle2onnx keeps them (the second large enough to cross as a
    dims-only stand-in), the MatMul's an initializer (one too)."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 3, 3, 3)).astype(np.float32), rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    w3 = numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), "w3")
    nodes = [helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),
             helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2, "w2")),
             helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "paddle_cnn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 64])], [w3])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_a_file_with_weights_in_constant_nodes_is_priced_at_the_chosen_shapes_as_computed_by_hand(tmp_path):
    # Pins the figures counted on the placeholder form at the chosen shapes: reading the input's
    # Constant-node stand-ins once and its weight bytes from the summary must not move them.
    _paddle_style_cnn(tmp_path / "cnn.onnx")
    report = graphopt.optimize(str(tmp_path / "cnn.onnx"), passes=["cleanup", "fuse"], verify="off").report
    n, _, h, w = report["input"]["macs_shapes"]["x"]
    macs = n * h * w * 16 * (3 * 9 + 16 * 9) + n * 16 * 64
    weight_bytes = (16 * 3 * 9 + 16 * 16 * 9 + 16 * 64) * 4
    for side in ("input", "output"):
        figures = report[side]
        assert figures["macs_shapes"] == {"x": [n, 3, h, w]} and figures["macs"] == macs and figures["macs_unknown"] == {}
        assert figures["macs_by_dtype"] == {"fp32": macs, "fp16": 0, "int8": 0, "int4": 0}
        assert figures["macs_uncounted_nodes"] == 0 and figures["weight_bytes"] == weight_bytes
        assert figures["energy_proxy"]["compute_pj"] == pytest.approx(macs * (3.7 + 0.9))
        assert figures["energy_proxy"]["weight_dram_pj"] == pytest.approx(weight_bytes / 4 * 640.0)
    # Relu's input and output, 16 channels each, alive at once (and again around the second Conv).
    assert report["input"]["peak_activation_bytes"] == 2 * n * 16 * h * w * 4
    assert report["input"]["activations_unsized"] == 0
