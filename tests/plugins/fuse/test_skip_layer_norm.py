"""graphopt_plugins/fuse/skip_layer_norm.py: Add + LayerNormalization → contrib SkipLayerNormalization (onnxruntime).

The rule runs only when `residual_sum`, which comes first, is skipped.
"""

from fuse_support import fuse_and_check, model_from_text, op_counts

CONSTANTS = "<float[8] gamma = {0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0}, float[8] beta = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}>"


def residual_model(outputs: str = "float[2,4,8] y", extra: str = "", a_shape: str = "[2,4,8]", axis: int = -1):
    return model_from_text(f"""
        g (float{a_shape} a, float[2,4,8] b) => ({outputs}) {CONSTANTS} {{
            s = Add(a, b)
            y = LayerNormalization<axis={axis}, epsilon=1e-5>(s, gamma, beta)
            {extra}
        }}""", opset=17)


def test_add_then_layer_norm_fuses():
    fused, stats = fuse_and_check(residual_model(), target="onnxruntime", skip="residual_sum")
    assert stats["skip_layer_norm"] == 1
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [("SkipLayerNormalization", "com.microsoft")]
    assert list(fused.graph.node[0].input) == ["a", "b", "gamma", "beta"]


def test_residual_read_again_comes_from_the_sum_output():
    model = residual_model("float[2,4,8] y, float[2,4,8] z", extra="z = Relu(s)")
    fused, stats = fuse_and_check(model, target="onnxruntime", skip="residual_sum")
    assert stats["skip_layer_norm"] == 1
    skip = next(n for n in fused.graph.node if n.op_type == "SkipLayerNormalization")
    assert skip.output[3] == "s"
    assert op_counts(fused) == {"SkipLayerNormalization": 1, "Relu": 1}


def test_default_target_keeps_add_and_layer_norm():
    model = residual_model()
    fused, stats = fuse_and_check(model, skip="residual_sum")
    assert stats.get("skip_layer_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_broadcasting_add_stays():
    model = residual_model(a_shape="[1,4,8]")
    fused, stats = fuse_and_check(model, target="onnxruntime", skip="residual_sum")
    assert stats.get("skip_layer_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_normalisation_over_two_axes_stays():
    model = model_from_text("""
        g (float[2,4,8] a, float[2,4,8] b) => (float[2,4,8] y) <float[4,8] gamma = {0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0, 0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0, 0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0, 0.5, 1.0, 1.5, 2.0, -1.0, 0.25, 3.0, 1.0}> {
            s = Add(a, b)
            y = LayerNormalization<axis=-2>(s, gamma)
        }""", opset=17)
    fused, stats = fuse_and_check(model, target="onnxruntime", skip="residual_sum")
    assert stats.get("skip_layer_norm", 0) == 0
    assert op_counts(fused) == op_counts(model)
