"""Already-quantized graphs and recurrent ops pass through every first-party pass valid, as fast,
no larger, and exact where they must be: QDQ pairs stay where onnxruntime fuses them, a
quantized weight is never folded back to float, quantize never quantizes twice, LSTM weights
are left alone by lossless passes (quantize stores them int8, restored to float at load)."""

import collections
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
import torch_models
import trait_models

LOSSLESS = [["cleanup"], ["fuse"], ["cleanup", "fuse"], ["opset"]]
IMAGE = {"image": (1, 3, 32, 32)}


@functools.lru_cache(maxsize=None)
def _quantized_bytes(kind: str) -> bytes:
    cnn = trait_models.dynamic_cnn(13)
    if kind == "dynamic":
        return trait_models.prequantized_dynamic(cnn).SerializeToString()
    calibration = {"image": np.concatenate([torch_models.cnn_feeds(1, 32, seed=seed)["image"] for seed in range(4)])}
    return trait_models.prequantized_qdq(cnn, calibration).SerializeToString()


def _quantized(kind: str) -> onnx.ModelProto:
    return onnx.load_from_string(_quantized_bytes(kind))


def _runtime_ops(model: onnx.ModelProto, folder) -> collections.Counter:
    """The op histogram onnxruntime runs (its fusions applied: QLinearConv, QGemm, DynamicQuantizeMatMul…)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "runtime.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


_QUANTIZED_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
                      "MatMulIntegerToFloat", "QLinearGlobalAveragePool")


@pytest.mark.parametrize("kind", ["dynamic", "qdq"])
@pytest.mark.parametrize("passes", LOSSLESS, ids=",".join)
def test_a_quantized_model_keeps_its_integer_kernels_and_does_not_grow(kind, passes, tmp_path):
    model = _quantized(kind)
    result = graphopt.optimize(model, passes=passes, input_shapes=IMAGE, never_slower=False)
    onnx.checker.check_model(result.model, full_check=True)
    if passes != ["opset"]:  # a conversion may spell an op with a few more bytes (attributes become inputs)
        assert result.model.ByteSize() <= model.ByteSize()
    before, after = _runtime_ops(model, tmp_path), _runtime_ops(result.model, tmp_path)
    assert {op: after[op] for op in _QUANTIZED_KERNELS} == {op: before[op] for op in _QUANTIZED_KERNELS}
    assert sum(before[op] for op in _QUANTIZED_KERNELS) > 0


def test_cleanup_never_folds_a_quantized_weight_back_to_float():
    def conv_weights(m, dtype):
        return sorted(t.name for t in m.graph.initializer if t.data_type == dtype and len(t.dims) == 4)
    model = _quantized("qdq")
    result = graphopt.optimize(model, passes=["cleanup"], input_shapes=IMAGE, never_slower=False)
    assert conv_weights(model, onnx.TensorProto.INT8)
    assert conv_weights(result.model, onnx.TensorProto.INT8) == conv_weights(model, onnx.TensorProto.INT8)
    assert conv_weights(result.model, onnx.TensorProto.FLOAT) == []


@pytest.mark.parametrize("kind", ["dynamic", "qdq"])
def test_quantize_leaves_a_quantized_model_alone(kind):
    model = _quantized(kind)
    calibration = {"image": np.stack([torch_models.cnn_feeds(1, 32, seed=seed)["image"] for seed in range(4)])}
    result = graphopt.optimize(model, passes=["cleanup", "fuse", "quantize"], calibration=calibration, input_shapes=IMAGE,
                               never_slower=False)
    entry = result.report["passes"][-1]
    assert entry["name"] == "quantize" and entry["status"] == "unchanged" and entry["details"]["already_quantized"]


@pytest.mark.parametrize("passes", [["cleanup", "fuse"], ["prune"], ["factorize"], ["opset"]], ids=",".join)
def test_lstm_weights_are_left_exact(passes):
    model = trait_models.crnn_lstm()
    feeds = trait_models.crnn_feeds(1, 64)
    result = graphopt.optimize(model, passes=passes, input_shapes={k: v.shape for k, v in feeds.items()}, never_slower=False)
    onnx.checker.check_model(result.model, full_check=True)
    for before, after in zip(_lstm_weights(model), _lstm_weights(result.model), strict=True):
        np.testing.assert_array_equal(before, after)


def test_quantize_stores_lstm_weights_int8_restored_to_float_per_gate_row():
    # No int8 LSTM kernel exists here: W and R stay float to compute, stored as int8 with one scale
    # per gate row, Cast -> Mul, which onnxruntime folds back into float weights at load.
    model = trait_models.crnn_lstm()
    feeds = trait_models.crnn_feeds(1, 64)
    result = graphopt.optimize(model, passes=["cleanup", "fuse", "quantize"], input_shapes={k: v.shape for k, v in feeds.items()},
                               never_slower=False, latency_on="none")  # decided by accuracy alone: no timing noise
    onnx.checker.check_model(result.model, full_check=True)
    producers = {out: node for node in result.model.graph.node for out in node.output}
    (lstm,) = [node for node in result.model.graph.node if node.op_type == "LSTM"]
    for name in lstm.input[1:3]:  # W, R
        assert producers[name].op_type == "Mul" and producers[producers[name].input[0]].op_type == "Cast"
    for before, after in zip(_lstm_weights(model)[:2], _lstm_weights(result.model)[:2], strict=True):
        step = np.abs(before).max(axis=(0, 2), keepdims=True) / 127  # one int8 step per gate row (both directions)
        assert np.all(np.abs(after - before) <= step / 2 + 1e-7)
    assert result.model.ByteSize() < 0.5 * model.ByteSize()


def _lstm_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """W, R and B of the model's one LSTM, as the graph computes them (Cast -> Mul evaluated)."""
    import onnx.reference

    names = [name for node in model.graph.node if node.op_type == "LSTM" for name in node.input[1:4] if name]
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.output[:]
    stripped.graph.output.extend([onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names])
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    if all(name in values for name in names):
        return [values[name] for name in names]
    needed = {n.output[0] for n in model.graph.node if n.op_type in ("Cast", "Mul", "Constant")}
    del stripped.graph.node[:]
    stripped.graph.node.extend([n for n in model.graph.node if n.output[0] in needed])
    del stripped.graph.input[:]
    return onnx.reference.ReferenceEvaluator(stripped).run(None, {})
