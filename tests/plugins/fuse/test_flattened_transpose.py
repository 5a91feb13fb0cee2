"""graphopt_plugins/fuse/flattened_transpose.py: Reshape→Transpose→Reshape around merged leading axes → one Transpose."""

import pytest
from fuse_support import fuse_and_check, model_from_text, op_counts


def sandwich(flat: str, back: str, out_shape: str = "[2,4,8,6]", extra_output: str = ""):
    outputs = f"float{out_shape} y" + (f", {extra_output}" if extra_output else "")
    return model_from_text(f"""
        g (float[2,4,6,8] x) => ({outputs}) <int64[3] flat = {flat}, int64[4] back = {back}> {{
            f = Reshape(x, flat)
            t = Transpose<perm=[0,2,1]>(f)
            y = Reshape(t, back)
        }}""", opset=17)


@pytest.mark.parametrize("flat", ["{-1, 6, 8}", "{8, 6, 8}"])
def test_flattened_swap_becomes_one_transpose(flat):
    fused, stats = fuse_and_check(sandwich(flat, "{2, 4, 8, 6}"))
    assert stats["flattened_transpose"] == 1
    assert op_counts(fused) == {"Transpose": 1}
    assert list(fused.graph.node[0].attribute[0].ints) == [0, 1, 3, 2]


def test_split_into_other_leading_axes_stays():
    model = sandwich("{8, 6, 8}", "{4, 2, 8, 6}", out_shape="[4,2,8,6]")
    fused, stats = fuse_and_check(model)
    assert stats.get("flattened_transpose", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_merge_of_inner_axes_stays():
    model = model_from_text("""
        g (float[2,4,6,8] x) => (float[2,4,8,6] y) <int64[3] flat = {2, 24, 8}, int64[4] back = {2, 4, 8, 6}> {
            f = Reshape(x, flat)
            t = Transpose<perm=[0,2,1]>(f)
            y = Reshape(t, back)
        }""", opset=17)
    fused, stats = fuse_and_check(model)
    assert stats.get("flattened_transpose", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_intermediate_read_elsewhere_stays():
    model = sandwich("{8, 6, 8}", "{2, 4, 8, 6}", extra_output="float[8,8,6] t")
    fused, stats = fuse_and_check(model)
    assert stats.get("flattened_transpose", 0) == 0
    assert op_counts(fused) == op_counts(model)


def test_dynamo_sdpa_key_transpose_simplified_under_the_default_target():
    import graphopt
    import test_attention

    model = graphopt.optimize(test_attention._sdpa_export("dynamo"), passes=["cleanup"], verify="off").model
    fused, stats = fuse_and_check(model)
    assert stats["flattened_transpose"] == 1 and stats["transpose_chain"] == 1
    assert op_counts(model)["Reshape"] - op_counts(fused)["Reshape"] == 2
    assert op_counts(model)["Transpose"] - op_counts(fused)["Transpose"] == 1
