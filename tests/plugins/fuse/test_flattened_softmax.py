"""graphopt_plugins/fuse/flattened_softmax.py: Flatten→Softmax→Reshape(Shape(x)) → Softmax(x) over the last axis."""

import onnx
import pytest
from fuse_support import fuse_and_check, model_from_text, op_counts


def flattened_softmax(opset: int, flatten_axis: int = 3, softmax_axis: int = -1, shape_of: str = "x", out: str = "2,3,4,5"):
    return model_from_text(f"""
        g (float[2,3,4,5] x, float[6,20] other) => (float[{out}] y) {{
            s = Shape({shape_of})
            f = Flatten<axis={flatten_axis}>(x)
            p = Softmax<axis={softmax_axis}>(f)
            y = Reshape(p, s)
        }}""", opset=opset)


@pytest.mark.parametrize(("opset", "axis"), [(11, 3), (13, -1), (17, -1)])
def test_flattened_softmax_becomes_one_softmax(opset, axis):
    fused, stats = fuse_and_check(flattened_softmax(opset, softmax_axis=1 if opset < 13 else -1))
    assert stats["flattened_softmax"] == 1
    assert op_counts(fused) == {"Softmax": 1}
    assert {a.name: onnx.helper.get_attribute_value(a) for a in fused.graph.node[0].attribute}["axis"] == axis


def test_flatten_of_more_axes_stays():
    fused, stats = fuse_and_check(flattened_softmax(17, flatten_axis=2))
    assert stats.get("flattened_softmax", 0) == 0
    assert {"Flatten", "Softmax", "Reshape"} <= set(op_counts(fused))


def test_reshape_to_another_shape_stays():
    fused, stats = fuse_and_check(flattened_softmax(17, shape_of="other", out="6,20"))
    assert stats.get("flattened_softmax", 0) == 0
    assert {"Flatten", "Softmax", "Reshape"} <= set(op_counts(fused))
