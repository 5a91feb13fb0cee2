"""A user's first try: `graphopt optimize m.onnx --passes cleanup,fuse`, no other flag, on models
with the traits real exports have (tests/trait_models.py). Each must exit 0, keep every dynamic
dim of the interface, pass the full checker, and equal the original at two different shapes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt.cli import main
from graphopt.verify import generate_feeds
from trait_models import (
    crnn_lstm,
    dynamic_cnn,
    dynamic_transformer,
    if_feeds,
    if_with_weights,
    set_input_dims,
    with_wrong_output_shape,
    yolo_like,
)

# name → (builder, two shapes per dynamic input the output must agree with the original at)
CASES = {
    "dynamic_cnn11": (lambda: dynamic_cnn(11), [{"image": (1, 3, 64, 64)}, {"image": (2, 3, 96, 128)}]),
    "dynamic_cnn12": (lambda: dynamic_cnn(12), [{"image": (1, 3, 64, 64)}, {"image": (2, 3, 96, 128)}]),
    "dynamic_cnn17": (lambda: dynamic_cnn(17), [{"image": (1, 3, 64, 64)}, {"image": (2, 3, 96, 128)}]),
    "dynamic_transformer": (dynamic_transformer, [{"ids": (1, 16), "mask": (1, 16)}, {"ids": (3, 40), "mask": (3, 40)}]),
    "yolo_like": (yolo_like, [{"images": (1, 3, 64, 64)}, {"images": (2, 3, 96, 160)}]),
    "crnn_lstm": (crnn_lstm, [{"image": (1, 1, 16, 64)}, {"image": (2, 1, 16, 100)}]),
    "if_with_weights": (if_with_weights, [{"x": (2, 64)}, {"x": (5, 64)}]),
    "wrong_output_shape": (lambda: with_wrong_output_shape(dynamic_cnn(17), [1, "seqlen", 7]),
                           [{"image": (1, 3, 64, 64)}, {"image": (2, 3, 96, 128)}]),
    "unknown_dims": (lambda: set_input_dims(dynamic_cnn(17), "image", [None, 3, None, None]),
                     [{"image": (1, 3, 64, 64)}, {"image": (2, 3, 96, 128)}]),
}


def _dims(value):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_try_optimize_keeps_the_dynamic_interface(case, tmp_path, capsys):
    build, shapes = CASES[case]
    original = build()
    path, output, report = tmp_path / "m.onnx", tmp_path / "m.opt.onnx", tmp_path / "report.json"
    onnx.save(original, path)
    code = main(["optimize", str(path), "--passes", "cleanup,fuse", "--report", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    optimized = onnx.load(output)
    onnx.checker.check_model(optimized, full_check=True)
    assert [_dims(v) for v in optimized.graph.input] == [_dims(v) for v in original.graph.input]
    document = json.loads(report.read_text())
    chosen = document["verification"]["shapes"]
    assert set(chosen) == {v.name for v in original.graph.input}
    assert all(entry["reason"] for entry in chosen.values())
    for at in shapes:
        feeds = generate_feeds(original, at, seed=1)
        feeds = {name: array[0] for name, array in feeds.items()}
        if case == "if_with_weights":
            feeds["flag"] = if_feeds()["flag"]
        for expected, got in zip(_run(original, feeds), _run(optimized, feeds)):
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_wrong_declared_output_shape_is_warned_about_and_repaired(tmp_path, capsys):
    model = with_wrong_output_shape(dynamic_cnn(17), [1, "seqlen", 7])
    with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
        onnx.checker.check_model(model, full_check=True)
    path, report = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(model, path)
    assert main(["optimize", str(path), "--passes", "cleanup", "--report", str(report)]) == 0
    _, err = capsys.readouterr()
    assert "declares shape [1, seqlen, 7]" in err
    warnings = json.loads(report.read_text())["warnings"]
    assert any("'logits' declares shape [1, seqlen, 7]" in w for w in warnings)
    optimized = onnx.load(tmp_path / "m.opt.onnx")
    assert _dims(optimized.graph.output[0]) == ["batch", 10]


def test_freeze_shapes_writes_the_verified_shapes(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(dynamic_cnn(17), path)
    assert main(["optimize", str(path), "--passes", "cleanup,fuse", "--freeze-shapes",
                 "--input-shape", "image=1,3,96,96"]) == 0
    out, _ = capsys.readouterr()
    assert _dims(onnx.load(tmp_path / "m.opt.onnx").graph.input[0]) == [1, 3, 96, 96]
    assert main(["optimize", str(path), "--passes", "cleanup", "--freeze-shapes", "-o", str(tmp_path / "c.onnx")]) == 0
    out, _ = capsys.readouterr()
    assert "froze input 'image' at 1x3x224x224" in out
    assert _dims(onnx.load(tmp_path / "c.onnx").graph.input[0]) == [1, 3, 224, 224]


def test_terminal_says_which_shapes_were_chosen_and_why(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(dynamic_transformer(), path)
    assert main(["optimize", str(path), "--passes", "cleanup"]) == 0
    out, _ = capsys.readouterr()
    assert "verified input 'ids' at 1x128" in out and "sequence default" in out


def test_inspect_counts_macs_at_chosen_or_given_shapes(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(crnn_lstm(), path)
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # Conv 1→8 and 8→16 at 16x224 and 8x112, the bidirectional LSTM over 112 steps, the classifier.
    conv = 16 * 224 * 8 * 9 + 8 * 112 * 16 * 8 * 9
    lstm = 112 * 2 * 4 * 24 * (32 + 24)
    assert summary["macs"] == conv + lstm + 112 * 48 * 11
    assert summary["macs_shapes"]["image"]["shape"] == [1, 1, 16, 224]
    assert main(["inspect", str(path), "--input-shape", "image=1,1,16,64"]) == 0
    out = capsys.readouterr().out
    assert "MACs counted at image=1x1x16x64" in out and f"{conv * 64 // 224:,}" not in out


def test_verify_and_bench_need_no_shapes(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(dynamic_cnn(17), path)
    assert main(["optimize", str(path), "--passes", "cleanup,fuse", "--quiet"]) == 0
    assert main(["verify", str(path), str(tmp_path / "m.opt.onnx")]) == 0
    assert main(["bench", str(path), "--runs", "2"]) == 0
    assert "median" in capsys.readouterr().out


def test_an_output_declared_without_a_shape_gets_the_inferred_one(tmp_path, capsys):
    # make_tensor_value_info(name, FLOAT, None), as hand-built models have it: onnxruntime runs
    # the model, onnx's checker refuses it
    model = dynamic_cnn(17)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(model)
    path, report = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(model, path)
    assert main(["optimize", str(path), "--passes", "cleanup,fuse", "--report", str(report)]) == 0
    assert "output 'logits' declares no shape" in capsys.readouterr().err
    assert any("declares no shape" in w for w in json.loads(report.read_text())["warnings"])
    optimized = onnx.load(tmp_path / "m.opt.onnx")
    onnx.checker.check_model(optimized, full_check=True)
    assert _dims(optimized.graph.output[0]) == ["batch", 10]
    assert main(["inspect", str(path)]) == 0


def test_an_input_declared_without_a_shape_is_named_in_one_line(tmp_path, capsys):
    model = dynamic_cnn(17)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["optimize", str(path), "--passes", "cleanup"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'image'" in err and "declares a type but no shape" in err
    assert not (tmp_path / "m.opt.onnx").exists()


def _stale_trace(length: int = 20) -> onnx.ModelProto:
    """x [1, time, 8] -> Relu -> MatMul -> Add -> y, every annotation written at time = `length`,
    as an exporter that fixed the dim while tracing leaves it."""
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node("MatMul", ["r", "w"], ["h"]),
         onnx.helper.make_node("Add", ["h", "b"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "time", 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, length, 16])],
        [onnx.numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
         onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")],
        value_info=[onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1, length, 8]),
                    onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [1, length, 16])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def _optimized_session(path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_annotations_a_trace_fixed_are_dropped_so_the_model_runs_at_every_length(tmp_path, capsys):
    path, report = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(_stale_trace(), path)
    x = np.ones((1, 50, 8), np.float32)
    with pytest.raises(Exception, match="reshape"):  # onnxruntime's optimizer plans with time = 20
        _optimized_session(path).run(None, {"x": x})
    assert main(["optimize", str(path), "--passes", "cleanup,fuse,quantize", "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "'y' declares shape [1, 20, 16]" in err and "'r' declares [1, 20, 8] where the model makes [1, time, 8]" in err
    assert len(json.loads(report.read_text())["warnings"]) >= 2
    optimized = onnx.load(tmp_path / "m.opt.onnx")
    assert _dims(optimized.graph.output[0]) == [1, "time", 16]
    assert _optimized_session(tmp_path / "m.opt.onnx").run(None, {"x": x})[0].shape == (1, 50, 16)
