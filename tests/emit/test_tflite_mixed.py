"""graphopt/emit/tflite_mixed.py (with tflite_segments, tflite_merge): `--emit-precision int8-mixed`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.errors import VerificationError



def _conv_relu(nodes: list, x: str, layer: int, last: bool) -> str:
    """Appends Conv(x, w{layer}, b{layer}) and, unless `last` (the output "logits"), a Relu; returns the new tensor."""
    out = "logits" if last else f"c{layer}"
    nodes.append(helper.make_node("Conv", [x, f"w{layer}", f"b{layer}"], [out], pads=[1, 1, 1, 1]))
    if last:
        return out
    nodes.append(helper.make_node("Relu", [out], [f"r{layer}"]))
    return f"r{layer}"

def conv_chain(sqrt: bool = False, outlier: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """image (1, 3, 16, 16) -> six 3x3 Conv+Relu layers of 8 channels -> logits (1, 4, 16, 16).

    `sqrt`: a Sqrt(x + 1) after the third layer (LiteRT has SQRT; onnx2tf's int8 writer does not).
    `outlier`: the second layer's channel 0 that many times larger, and the third layer's reads of it
    that many times smaller (the same function; one activation range per tensor then spans it).
    """
    rng = np.random.default_rng(seed)
    nodes, weights, x = [], [], "image"
    for layer, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 8), (8, 8), (8, 8), (8, 4)]):
        w = rng.normal(0, (2.0 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, cout).astype(np.float32)
        if layer == 1:
            w[0] *= outlier
            b[0] *= outlier
        if layer == 2:
            w[:, 0] /= outlier
        weights += [numpy_helper.from_array(w, f"w{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        x = _conv_relu(nodes, x, layer, last=layer == 5)
        if sqrt and layer == 2:
            weights.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
            nodes += [helper.make_node("Add", [x, "one"], ["shifted"]), helper.make_node("Sqrt", ["shifted"], ["rooted"])]
            x = "rooted"
    graph = helper.make_graph(nodes, "conv_chain", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4, 16, 16])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _images(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).random((count, 1, 3, 16, 16), dtype=np.float32)}


def _emit(model, tmp_path, precision: str):
    source = tmp_path / "chain.onnx"
    onnx.save(model, source)
    output = tmp_path / f"chain.{precision}.tflite"
    report = graphopt.optimize_to_file(str(source), output, passes=["cleanup"], emit="tflite", emit_precision=precision,
                                       calibration=_images(8, 1), inputs=_images(4, 2))
    return report["emit"], output


def test_an_op_the_int8_writer_lacks_stays_float_in_int8_mixed_and_the_rest_is_int8(tmp_path, capsys):
    model = conv_chain(sqrt=True)
    source = tmp_path / "sqrt.onnx"
    onnx.save(model, source)
    np.savez(tmp_path / "cal.npz", **_images(8, 1))
    # full-integer: the op named, exit 2, nothing written
    assert main(["optimize", str(source), "--emit", "tflite", "--emit-precision", "int8", "--calibration",
                 str(tmp_path / "cal.npz"), "-o", str(tmp_path / "no.tflite")]) == 2
    assert "SQRT" in capsys.readouterr().err and not (tmp_path / "no.tflite").exists()
    output, report = tmp_path / "sqrt.tflite", tmp_path / "report.json"
    assert main(["optimize", str(source), "--emit", "tflite", "--emit-precision", "int8-mixed", "--calibration",
                 str(tmp_path / "cal.npz"), "-o", str(output), "--report", str(report), "--passes", "cleanup"]) == 0
    assert "nodes int8, float32: nodes" in capsys.readouterr().out  # the terminal names the float32 pieces
    emitted = json.loads(report.read_text())["emit"]
    mixed = emitted["mixed_precision"]
    assert emitted["verification"]["ok"] and emitted["verification"]["outputs"]["logits"]["cosine"] >= 0.99
    assert 0 < mixed["int8_pieces"] < mixed["pieces"] and any("SQRT" in piece for piece in mixed["float_pieces"])
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(output))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert {"SQRT", "QUANTIZE", "DEQUANTIZE"} <= ops  # float SQRT between int8 pieces
    kinds = {d["dtype"] for d in interpreter.get_tensor_details() if len(d["shape"]) == 4 and d["shape"][-1] == 8}
    assert np.int8 in kinds and np.float32 in kinds


def test_int8_mixed_keeps_float_the_piece_whose_activation_range_int8_cannot_hold(tmp_path):
    model = conv_chain(outlier=300.0)
    with pytest.raises(VerificationError, match="cosine"):  # full-integer misses: exit 1, nothing written
        _emit(model, tmp_path, "int8")
    assert not (tmp_path / "chain.int8.tflite").exists()
    emitted, output = _emit(model, tmp_path, "int8-mixed")
    mixed = emitted["mixed_precision"]
    assert emitted["verification"]["outputs"]["logits"]["cosine"] >= 0.99 and output.is_file()
    assert mixed["float_pieces"] and 0 < mixed["int8_nodes"] < mixed["nodes"]


def test_pieces_joined_in_float32_compute_the_whole_model():
    from graphopt.emit.tflite import convert_to_tflite, restore_layout, run_tflite
    from graphopt.emit.tflite_merge import chain_flatbuffers
    from graphopt.emit.tflite_segments import cut_into_pieces, cuts

    model = conv_chain()
    found = cuts(model)
    assert sorted(found)[0] == 1 and all(len(names) == 1 for names in found.values())  # a chain: one tensor at each cut
    pieces = cut_into_pieces(model, [4, 8])
    assert [piece.nodes for piece in pieces] == [4, 4, 3] and pieces[1].inputs == ["cut0"] and pieces[1].originals["cut0"] == "r1"
    joined = chain_flatbuffers([(convert_to_tflite(p.model, "fp32").flatbuffer, p.inputs, p.outputs) for p in pieces], ["logits"])
    samples = [{"image": _images(1, 3)["image"][0]}]
    import onnxruntime as ort
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, samples[0])[0]
    got, _ = restore_layout(run_tflite(joined, samples, model)[0], [{"logits": expected}])
    np.testing.assert_allclose(got[0]["logits"], expected, atol=1e-4 * np.abs(expected).max())


def test_int8_mixed_is_the_full_integer_model_where_that_holds(tmp_path):
    emitted, _ = _emit(conv_chain(), tmp_path, "int8-mixed")
    assert emitted["mixed_precision"]["pieces"] == 1 and emitted["mixed_precision"]["float_pieces"] == []
    assert emitted["verification"]["outputs"]["logits"]["cosine"] >= 0.99


def test_a_batch_2_int64_encoder_is_calibrated_whole_and_its_attention_stays_float(tmp_path):
    import torch_models

    feeds = [torch_models.transformer_feeds(seed=s) for s in range(8)]
    calibration = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
    assert calibration["ids"].shape[1:] == (2, 16) and calibration["ids"].dtype == np.int64
    source = tmp_path / "encoder.onnx"
    onnx.save(torch_models.transformer("torchscript", 17), source)
    report = graphopt.optimize_to_file(str(source), tmp_path / "encoder.tflite", passes=["cleanup", "fuse"], emit="tflite",
                                       emit_precision="int8-mixed", calibration=calibration)
    mixed = report["emit"]["mixed_precision"]
    # onnx2tf's own calibration fed batch 1 and float32: "RESHAPE failed to prepare (512 != 1024)" before
    assert report["emit"]["verification"]["ok"] and min(r["cosine"] for r in report["emit"]["verification"]["outputs"].values()) >= 0.99
    assert mixed["int8_nodes"] > 0 and any("Weight tensor must be constant" in piece for piece in mixed["float_pieces"])


def square_chain() -> onnx.ModelProto:
    """image (1, 3, 16, 16) -> Conv 16 -> Relu -> Conv 16 -> Relu -> Conv 8 -> Relu -> Conv 4: the first tensors are (1, 16, 16, 16)."""
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "image"
    for layer, (cin, cout) in enumerate([(3, 16), (16, 16), (16, 8), (8, 4)]):
        weights += [numpy_helper.from_array(rng.normal(0, (2.0 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32), f"w{layer}"),
                    numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"b{layer}")]
        x = _conv_relu(nodes, x, layer, last=layer == 3)
    graph = helper.make_graph(nodes, "square_chain", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4, 16, 16])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_pieces_are_cut_only_where_the_shape_tells_the_layout_and_each_computes_its_part():
    from graphopt.emit.tflite import convert_to_tflite
    from graphopt.emit.tflite_mixed import _restored
    from graphopt.emit.tflite_segments import cut_into_pieces, cuts, piece_feeds

    model = square_chain()
    found = cuts(model)
    # a (1, 16, 16, 16) tensor is the same shape channels first and last: a piece handing it over was read back
    # untransposed (the torch CNN's stem piece: cosine 0.008 alone), so only the 8-channel tensors are cuts
    assert found and all(names == ["r2"] or names == ["c2"] for names in found.values())
    pieces = cut_into_pieces(model, sorted(found))
    images = _images(2, 4)
    feeds = {**images, **piece_feeds(model, images, ["c2", "r2"])}
    for piece in pieces:
        samples = [{name: feeds[piece.originals[name]][i] for name in piece.inputs} for i in range(2)]
        session = _session(piece.model)
        expected = [dict(zip(piece.outputs, session.run(piece.outputs, s))) for s in samples]
        got = _restored(convert_to_tflite(piece.model, "fp32").flatbuffer, piece.model, samples, expected)
        for name in piece.outputs:
            reference = np.stack([e[name] for e in expected])
            np.testing.assert_allclose(np.stack([g[name] for g in got]), reference, atol=1e-4 * np.abs(reference).max())


def _session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
