"""What every fuse test does: build a tiny model, fuse it, check it in onnxruntime.

`fuse_and_check` holds each case to the pass contract: the result passes the full checker,
its outputs equal the original's in onnxruntime within the verifier's lossless per-dtype
tolerance (the pass's own), and a second run changes nothing.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

import graphopt
from graphopt.verify.metrics import tolerance_for

__all__ = ["model_from_text", "random_feeds", "run", "fuse", "fuse_and_check", "op_counts", "onnxruntime_ops"]


def model_from_text(text: str, opset: int = 17, ir_version: int = 8, extra_opsets: str = "") -> onnx.ModelProto:
    header = f'<ir_version: {ir_version}, opset_import: ["" : {opset}{extra_opsets}]>\n'
    model = onnx.parser.parse_model(header + text)
    onnx.checker.check_model(model, full_check=True)
    return model


def random_feeds(model: onnx.ModelProto, seed: int = 0, given: dict | None = None) -> dict[str, np.ndarray]:
    """Uniform(-2, 2) floats for every non-initializer input with a static shape."""
    rng = np.random.default_rng(seed)
    feeds = dict(given or {})
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in feeds or value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        assert dtype.kind == "f", f"give a feed for {value.name}"
        shape = [d.dim_value for d in tensor_type.shape.dim]
        feeds[value.name] = rng.uniform(-2, 2, shape).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([o.name for o in model.graph.output], feeds)


def fuse(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, dict]:
    """(fused model, the pass's stats) with verification off, so the test does the checking."""
    result = graphopt.optimize(model, passes=["fuse"], options={"fuse": options}, verify="off")
    entry = result.report["passes"][0]
    return result.model, dict(entry.get("details", {}))


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def fuse_and_check(model: onnx.ModelProto, feeds: dict | None = None, **options) -> tuple[onnx.ModelProto, dict]:
    fused, stats = fuse(model, **options)
    onnx.checker.check_model(fused, full_check=True)
    feeds = random_feeds(model, given=feeds)
    for expected, actual in zip(run(model, feeds), run(fused, feeds), strict=True):
        tolerance = tolerance_for(expected.dtype)
        np.testing.assert_allclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol)
    again, second_stats = fuse(fused, **options)
    rewrites = {rule: count for rule, count in second_stats.items() if rule != "warnings"}  # warnings repeat, rewrites must not
    assert not any(rewrites.values()), f"second run rewrote again: {second_stats}"
    assert again.SerializeToString() == fused.SerializeToString(), "second run changed the model"
    return fused, stats


def onnxruntime_ops(model: onnx.ModelProto, folder) -> Counter:
    """The op histogram of `model` as onnxruntime runs it on CPU (its optimizer's output at the
    extended level: fusions such as LayerNormFusion and GeluFusion, no layout changes)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "onnxruntime_optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return op_counts(onnx.load(options.optimized_model_filepath))
