"""graphopt_plugins/quantize/quantize_pass.py: the pass end to end on torch-exported models and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch_models
from quantize_support import op_counts, ort_optimized_ops, quantize_and_check

from graphopt.cli import main


def _cnn_calibration(samples: int = 8, seed: int = 100) -> dict[str, np.ndarray]:
    return {"image": np.stack([torch_models.cnn_feeds(seed=seed + s)["image"] for s in range(samples)])}


def _transformer_calibration(samples: int = 6, seed: int = 100) -> dict[str, np.ndarray]:
    feeds = [torch_models.transformer_feeds(seed=seed + s) for s in range(samples)]
    return {name: np.stack([f[name] for f in feeds]) for name in ("ids", "mask")}


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_cnn_static_every_calibration_method(method):
    model = torch_models.cnn("torchscript", 17)
    feeds = torch_models.cnn_feeds(seed=7)
    quantized, stats = quantize_and_check(model, _cnn_calibration(), feeds=feeds, calibrate=method)
    assert stats["calibration"] == method and stats["quantized"] == 7
    ops = ort_optimized_ops(quantized)
    assert ops["QLinearConv"] >= 5 and ops["QGemm"] == 1, ops


@pytest.mark.parametrize("exporter", torch_models.EXPORTERS)
def test_transformer_dynamic_runs_dynamicquantizematmul(exporter):
    model = torch_models.transformer(exporter, 17)
    calibration = _transformer_calibration()
    quantized, stats = quantize_and_check(model, calibration, feeds=torch_models.transformer_feeds(seed=9), mode="dynamic")
    assert stats["quantized"] == 12  # q, k, v, o, two FFN linears per layer; attention MatMuls stay float
    ops = ort_optimized_ops(quantized)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == 12, ops


def test_transformer_static_runs_qlinearmatmul():
    model = torch_models.transformer("torchscript", 17)
    quantized, stats = quantize_and_check(model, _transformer_calibration(), feeds=torch_models.transformer_feeds(seed=9), mode="static")
    assert ort_optimized_ops(quantized)["QLinearMatMul"] == 12


def test_transformer_weight_only_int8_shrinks_the_weights():
    model = torch_models.transformer("torchscript", 17)
    quantized, _ = quantize_and_check(model, _transformer_calibration(), feeds=torch_models.transformer_feeds(seed=9),
                                      mode="weight-only")
    assert op_counts(quantized)["QuantizeLinear"] == 0
    assert ort_optimized_ops(quantized)["MatMulNBits"] == 12


@pytest.mark.parametrize("assignment", [
    "quantize.mode=fastest", "quantize.calibrate=magic", "quantize.weight_bits=3", "quantize.budget=speed:2",
    "quantize.block_size=24", "quantize.latency=maybe", "quantize.op_types=Conv,Relu", "quantize.percentile=20",
])
def test_wrong_option_values_exit_2(tmp_path, capsys, assignment):
    path = tmp_path / "cnn.onnx"
    onnx.save(torch_models.cnn("torchscript", 17), path)
    code = main(["optimize", str(path), "--passes", "quantize", "--set", assignment, "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "cnn.opt.onnx").exists()


def test_cli_with_calibration_file_writes_a_report_with_the_layer_table(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(torch_models.cnn("torchscript", 17), path)
    np.savez(tmp_path / "calibration.npz", **_cnn_calibration())
    report = tmp_path / "report.json"
    code = main(["optimize", str(path), "--passes", "quantize", "--calibration", str(tmp_path / "calibration.npz"),
                 "--set", "quantize.latency=off", "--report", str(report), "--quiet"])
    assert code == 0
    entry = json.loads(report.read_text())["passes"][0]
    assert entry["status"] == "accepted" and entry["details"]["data"] == "calibration"
    assert {row["node"] for row in entry["details"]["layers"]} >= {"/stem/Conv", "/head/Gemm"}
    again = main(["optimize", str(tmp_path / "cnn.opt.onnx"), "-o", str(tmp_path / "twice.onnx"), "--passes", "quantize",
                  "--report", str(report), "--quiet"])
    assert again == 0 and json.loads(report.read_text())["passes"][0]["details"] == {"already_quantized": True}


def test_transformer_embedding_table_is_stored_int8_per_row_and_only_read_rows_are_dequantized():
    model = torch_models.transformer("torchscript", 17)
    quantized, stats = quantize_and_check(model, _transformer_calibration(), feeds=torch_models.transformer_feeds(seed=9),
                                          mode="dynamic")
    assert stats["embeddings"] == 1
    constants = {t.name: t for t in quantized.graph.initializer}
    tables = [n for n in quantized.graph.node if n.op_type == "Gather" and n.input[0] in constants]
    table = next(constants[n.input[0]] for n in tables if constants[n.input[0]].data_type == onnx.TensorProto.INT8)
    scales = next(constants[n.input[0]] for n in tables if constants[n.input[0]].data_type == onnx.TensorProto.FLOAT)
    assert list(table.dims) == [100, 32] and list(scales.dims) == [100, 1]
    # No DequantizeLinear of the whole table runs on every call: the gathered rows are scaled.
    assert op_counts(quantized)["DequantizeLinear"] == 0
    assert ort_optimized_ops(quantized)["DequantizeLinear"] == 0
    _, kept, _ = __import__("quantize_support").quantize(model, _transformer_calibration(), mode="dynamic", latency="off",
                                                          embeddings=False)
    assert kept["embeddings"] == 0
