"""What every quantize test does: build a small model, quantize it, check it in onnxruntime.

`quantize_and_check` holds a case to the pass contract: the full checker passes, onnxruntime
runs the result (optimizations off, as the verifier does, and all on, as users do) within the
pass's budget (cosine >= 0.99 by default), and a second run changes nothing.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.verify.metrics import output_metrics

__all__ = ["single_op_model", "calibration_for", "quantize", "quantize_and_check", "ort_optimized_ops", "run", "op_counts",
           "initializer"]

COSINE = 0.99  # the pass's default budget


def single_op_model(op: str, *, relu: bool = False, bias: bool = True, opset: int = 17, seed: int = 0,
                    trans_b: int = 1, channels: int = 32, size: int = 12) -> onnx.ModelProto:
    """x -> op (weight, bias constants) [-> Relu] -> y, with a static shape."""
    rng = np.random.default_rng(seed)
    attrs, inits = {}, []
    if op in ("Conv", "ConvTranspose"):
        x_shape = [1, 16, size, size]
        w_shape = [channels, 16, 3, 3] if op == "Conv" else [16, channels, 3, 3]
        attrs = {"pads": [1, 1, 1, 1]}
    elif op == "Gemm":
        x_shape, w_shape = [4, 64], ([channels, 64] if trans_b else [64, channels])
        attrs = {"transB": trans_b}
    else:
        x_shape, w_shape = [2, 8, 64], [64, channels]
    inits.append(numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32) * 0.2, "w"))
    inputs = ["x", "w"]
    if bias and op != "MatMul":
        inits.append(numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32) * 0.1, "b"))
        inputs.append("b")
    nodes = [helper.make_node(op, inputs, ["h" if relu else "y"], name=f"the_{op.lower()}", **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["h"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10 if opset >= 21 else 8)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def calibration_for(model: onnx.ModelProto, samples: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal((samples, *shape)).astype(np.float32)
    return feeds


def quantize(model, calibration=None, verify="off", **options) -> tuple[onnx.ModelProto, dict, dict]:
    """(model, the pass's stats, the pass's report entry)."""
    result = graphopt.optimize(model, passes=["quantize"], options={"quantize": options}, calibration=calibration,
                               verify=verify)
    entry = result.report["passes"][0]
    return result.model, dict(entry.get("details", {})), entry


def run(model: onnx.ModelProto, feeds: dict, optimize: bool = False) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def ort_optimized_ops(model: onnx.ModelProto) -> Counter:
    """The op histogram of the graph onnxruntime actually runs (ORT_ENABLE_ALL, saved to disk)."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return op_counts(onnx.load(options.optimized_model_filepath))


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def initializer(model: onnx.ModelProto, name_start: str, dtype=None) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.name.startswith(name_start) and (dtype is None or t.data_type == dtype)]


def quantize_and_check(model, calibration=None, cosine: float = COSINE, feeds=None, **options):
    """Quantizes (latency decisions off unless asked) and holds the result to the pass contract."""
    options.setdefault("latency", "off")
    calibration = calibration if calibration is not None else calibration_for(model)
    quantized, stats, entry = quantize(model, calibration, **options)
    assert entry["status"] == "accepted", entry
    onnx.checker.check_model(quantized, full_check=True)
    feeds = feeds or {name: values[0] for name, values in calibration_for(model, samples=1, seed=7).items()}
    for optimize in (False, True):
        for expected, actual in zip(run(model, feeds), run(quantized, feeds, optimize), strict=True):
            metrics = output_metrics(expected, actual)
            assert metrics["cosine"] >= cosine, (optimize, metrics)
    again, second_stats, second = quantize(quantized, calibration, **options)
    assert second["status"] == "unchanged" and not second["changed"], second
    assert second_stats.get("already_quantized") is True
    assert again.SerializeToString() == quantized.SerializeToString(), "second run changed the model"
    return quantized, stats
