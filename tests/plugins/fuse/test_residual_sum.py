"""graphopt_plugins/fuse/residual_sum.py: a residual Add before a LayerNormalization becomes Sum, so that
onnxruntime does not fuse the pair into its (slower) SkipLayerNormalization at load."""

from pathlib import Path

import onnx
import onnxruntime as ort

from fuse_support import fuse_and_check, model_from_text, op_counts
from test_skip_layer_norm import CONSTANTS, residual_model


def ort_optimized_ops(model: onnx.ModelProto, folder: Path) -> set[str]:
    """The op types onnxruntime runs after its own graph optimizations (ORT_ENABLE_ALL)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def test_residual_add_becomes_sum_and_onnxruntime_no_longer_fuses_it(tmp_path):
    model = residual_model()
    assert "SkipLayerNormalization" in ort_optimized_ops(model, tmp_path)  # what the rule prevents
    fused, stats = fuse_and_check(model)
    assert stats["residual_sum"] == 1
    assert op_counts(fused) == {"Sum": 1, "LayerNormalization": 1}
    assert "SkipLayerNormalization" not in ort_optimized_ops(fused, tmp_path)


def test_it_comes_before_skip_layer_norm_under_the_onnxruntime_target():
    fused, stats = fuse_and_check(residual_model(), target="onnxruntime")
    assert stats == {"residual_sum": 1}
    fused, stats = fuse_and_check(residual_model(), target="onnxruntime", skip="residual_sum")
    assert stats == {"skip_layer_norm": 1}


def test_an_add_of_a_constant_bias_stays():
    model = model_from_text(f"""
        g (float[2,4,8] a) => (float[2,4,8] y) {CONSTANTS[:-1]}, float[8] bias = {{1, 2, 3, 4, 5, 6, 7, 8}}> {{
            s = Add(a, bias)
            y = LayerNormalization<axis=-1, epsilon=1e-5>(s, gamma, beta)
        }}""", opset=17)
    fused, stats = fuse_and_check(model)
    assert stats.get("residual_sum", 0) == 0
    assert op_counts(fused) == op_counts(model)
