"""graphopt/emit: --emit ort and --emit tflite, verified in their runtimes, written atomically or not at all."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch_models

import graphopt
from graphopt.cli import main
from graphopt.emit.ort_format import ort_session


def _cnn_calibration(samples: int = 8) -> dict[str, np.ndarray]:
    return {"image": np.stack([torch_models.cnn_feeds(seed=100 + s)["image"] for s in range(samples)])}


@pytest.fixture
def cnn_path(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(torch_models.cnn("torchscript", 17), path)
    return path


def test_emit_ort_writes_the_ort_model_and_both_operator_configs_and_they_run(cnn_path, tmp_path):
    assert main(["optimize", str(cnn_path), "--passes", "cleanup,fuse", "--emit", "ort", "--report", str(tmp_path / "r.json"),
                 "--quiet"]) == 0
    written = tmp_path / "cnn.opt.ort"
    assert written.is_file() and not (tmp_path / "cnn.opt.onnx").exists()
    ops = (tmp_path / "cnn.opt.required_operators.config").read_text()
    typed = (tmp_path / "cnn.opt.required_operators_and_types.config").read_text()
    assert "Conv" in ops and "ai.onnx" in ops and "Conv" in typed and "float" in typed
    report = json.loads((tmp_path / "r.json").read_text())["emit"]
    assert report["format"] == "ort" and report["verification"]["ok"]
    assert report["verification"]["outputs"]["logits"]["max_abs_over_range"] <= 1e-4
    feeds = torch_models.cnn_feeds(seed=5)
    expected = ort.InferenceSession(str(cnn_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ort_session(written.read_bytes()).run(None, feeds)[0], expected, rtol=1e-4, atol=1e-5)


def test_an_op_onnxruntime_lacks_is_exit_2_naming_it_and_nothing_is_written(tmp_path, capsys):
    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>
        g (float[4] x) => (float[4] y) { y = my.domain.Frobnicate(x) }''')
    source = tmp_path / "custom.onnx"
    onnx.save(model, source)
    assert main(["optimize", str(source), "--emit", "ort", "--verify", "off"]) == 2
    assert "Frobnicate" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx"]


def test_emit_tflite_fp32_verifies_in_litert_with_the_layout_change_stated(cnn_path, tmp_path):
    output = tmp_path / "phone.tflite"
    report = graphopt.optimize_to_file(str(cnn_path), output, passes=["cleanup", "fuse"], emit="tflite")
    emitted = report["emit"]
    assert output.read_bytes()[4:8] == b"TFL3" and emitted["files"] == [str(output)]
    assert emitted["verification"]["ok"] and emitted["verification"]["outputs"]["logits"]["max_abs_over_range"] <= 1e-4
    assert emitted["layout"]["image"] == "NCHW→NHWC" and "channels last" in emitted["layout_note"]
    assert emitted["verification"]["runtime"].startswith("LiteRT")
    assert report["latency"]["backend"] == "host-litert"  # the default where a flatbuffer is emitted


def test_emit_tflite_int8_is_calibrated_on_the_given_data_and_keeps_cosine_0_99(cnn_path, tmp_path):
    output = tmp_path / "phone.int8.tflite"
    report = graphopt.optimize_to_file(str(cnn_path), output, passes=["cleanup", "fuse"], emit="tflite", emit_precision="int8",
                                       calibration=_cnn_calibration())
    emitted = report["emit"]
    assert emitted["verification"]["outputs"]["logits"]["cosine"] >= 0.99
    fp32 = graphopt.optimize_to_file(str(cnn_path), tmp_path / "phone.fp32.tflite", passes=["cleanup", "fuse"], emit="tflite")
    # int8 weights, per channel: a 17 kB model keeps its structure and a scale and an int64 zero point
    # per channel (12 bytes; 308 of them here, 3.7 kB), so the file does not fall to a quarter
    assert emitted["bytes"][str(output)] < 0.9 * fp32["emit"]["bytes"][str(tmp_path / "phone.fp32.tflite")]
    from ai_edge_litert.interpreter import Interpreter
    weights = [d for d in Interpreter(model_path=str(output)).get_tensor_details() if len(d["shape"]) == 4 and "filter" in d["name"]]
    assert weights and all(d["dtype"] == np.int8 for d in weights)


def test_emit_tflite_int8_takes_hardsigmoid_as_relu6_arithmetic(tmp_path):
    # below opset 14 torch writes HardSwish as x * HardSigmoid(x), which onnx2tf's int8 writer refuses (RELU_0_TO_1)
    source = tmp_path / "cnn13.onnx"
    onnx.save(torch_models.cnn("torchscript", 13), source)
    assert any(node.op_type == "HardSigmoid" for node in onnx.load(source).graph.node)
    output = tmp_path / "cnn13.int8.tflite"
    report = graphopt.optimize_to_file(str(source), output, passes=["cleanup"], emit="tflite", emit_precision="int8",
                                       calibration=_cnn_calibration())
    emitted = report["emit"]
    assert emitted["rewritten_for_converter"] == {"HardSigmoid": 1, "GlobalAveragePool": 1}
    assert emitted["verification"]["outputs"]["logits"]["cosine"] >= 0.99 and output.is_file()


def test_the_relu6_form_of_hardsigmoid_is_the_same_function():
    from graphopt.emit.tflite_int8_forms import int8_friendly

    model = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 13]>
        g (float[64] x) => (float[64] y) { y = HardSigmoid<alpha = 0.2, beta = 0.5>(x) }''')
    rewritten, counts = int8_friendly(model)
    assert counts == {"HardSigmoid": 1} and "HardSigmoid" not in {n.op_type for n in rewritten.graph.node}
    assert [n.op_type for n in model.graph.node] == ["HardSigmoid"]  # the caller's model is untouched
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.linspace(-5, 5, 64, dtype=np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(rewritten), np.clip(0.2 * x + 0.5, 0, 1), atol=1e-6)


def test_a_model_litert_cannot_take_is_exit_2_and_nothing_is_written(tmp_path, capsys):
    model = torch_models.transformer("torchscript", 17)  # int64 token ids cannot be calibrated for int8
    source = tmp_path / "encoder.onnx"
    onnx.save(model, source)
    assert main(["optimize", str(source), "--emit", "tflite", "--emit-precision", "int8", "--verify", "off"]) == 2
    assert "int8" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx"]


def test_emit_precision_is_only_for_tflite(cnn_path, capsys):
    assert main(["optimize", str(cnn_path), "--emit", "ort", "--emit-precision", "fp16"]) == 2
    assert "--emit-precision is for --emit tflite" in capsys.readouterr().err


def test_host_litert_times_in_litert_and_the_report_says_so():
    from graphopt import latency

    model = graphopt.optimize(torch_models.cnn("torchscript", 17), passes=["cleanup", "fuse"]).model
    timer = latency.backend("host-litert")
    timings = timer.compare({"a": model, "b": model}, torch_models.cnn_feeds(), seconds=0.05, rounds=2)
    assert timings["a"]["median_ms"] > 0 and timings["b"]["backend"] == "host-litert"


def test_emit_tflite_fp16_stores_float16_weights_behind_dequantize_and_runs_in_litert(cnn_path, tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    half = graphopt.optimize_to_file(str(cnn_path), tmp_path / "h.tflite", passes=["cleanup", "fuse"], emit="tflite",
                                     emit_precision="fp16")
    full = graphopt.optimize_to_file(str(cnn_path), tmp_path / "f.tflite", passes=["cleanup", "fuse"], emit="tflite")
    assert half["emit"]["verification"]["outputs"]["logits"]["cosine"] >= 0.999
    assert half["emit"]["bytes"][str(tmp_path / "h.tflite")] < full["emit"]["bytes"][str(tmp_path / "f.tflite")]
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs((tmp_path / "h.tflite").read_bytes(), 0))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    graph = model.subgraphs[0]
    dequantized = [op for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE]
    assert dequantized and all(graph.tensors[op.inputs[0]].type == schema.TensorType.FLOAT16 for op in dequantized)
    assert graph.tensors[graph.inputs[0]].type == schema.TensorType.FLOAT32  # the interface stays float32


def test_converting_with_onnx2tf_leaves_the_callers_recursion_limit_as_it_was(cnn_path, tmp_path):
    # onnx2tf raises it to 2**31 - 1 when imported; left so, a deep recursion elsewhere crashes the process
    import sys

    limit = sys.getrecursionlimit()
    graphopt.optimize_to_file(str(cnn_path), tmp_path / "m.tflite", passes=["cleanup"], emit="tflite")
    assert sys.getrecursionlimit() == limit
