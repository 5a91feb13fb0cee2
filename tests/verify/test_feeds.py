"""Generated and loaded verification inputs."""

import numpy as np
import onnx.parser
import pytest

from graphopt.errors import InputError, UsageError
from graphopt.verify import generate_feeds, load_feeds, parse_input_shape, split_samples

EMBEDDING = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[1, 16] ids, float[1, 4] x) => (float[1, 16, 8] y, float[1, 4] z) <float[50, 8] table = {%s}> {
  y = Gather(table, ids)
  z = Relu(x)
}""" % ", ".join(["0.5"] * 400)

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 3] x) => (float[batch, 3] y) { y = Relu(x) }
"""


def test_token_ids_stay_below_the_embedding_table_size():
    feeds = generate_feeds(onnx.parser.parse_model(EMBEDDING), seed=0, samples=64)
    ids = feeds["ids"]
    assert ids.dtype == np.int64 and ids.shape == (64, 1, 16)
    assert ids.min() >= 0 and ids.max() < 50
    assert ids.max() > 8  # the table's bound is used, not the small default range


def test_generation_is_reproducible_from_the_seed():
    model = onnx.parser.parse_model(EMBEDDING)
    a, b = generate_feeds(model, seed=3), generate_feeds(model, seed=3)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], generate_feeds(model, seed=4)["x"])


def test_dynamic_dimension_is_chosen_or_given():
    model = onnx.parser.parse_model(DYNAMIC)
    assert generate_feeds(model)["x"].shape == (1, 1, 3)  # a batch-like leading dim is 1
    assert generate_feeds(model, {"x": (5, 3)})["x"].shape == (1, 5, 3)
    with pytest.raises(UsageError, match="does not fit"):
        generate_feeds(model, {"x": (5, 4)})


def test_loaded_inputs_are_checked_against_the_model(tmp_path):
    model = onnx.parser.parse_model(DYNAMIC)
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((4, 2, 3), dtype=np.float64))
    feeds = load_feeds(good, model)
    assert feeds["x"].dtype == np.float32 and len(split_samples(feeds)) == 4
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.ones((2, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"shape \(2, 3\); expected \(N, \?, 3\)"):
        load_feeds(wrong, model)
    stranger = tmp_path / "stranger.npz"
    np.savez(stranger, y=np.ones((1, 2, 3), dtype=np.float32))
    with pytest.raises(InputError, match="names no model input: 'y'"):
        load_feeds(stranger, model)


def test_parse_input_shape():
    assert parse_input_shape("x=1,3,224,224") == ("x", (1, 3, 224, 224))
    with pytest.raises(UsageError):
        parse_input_shape("x=1,a")


def test_scalar_inputs_stay_arrays_and_run_in_onnxruntime():
    import graphopt

    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float x) => (float y) { y = Neg(x) }""")
    samples = split_samples(generate_feeds(model, samples=2))
    assert all(isinstance(s["x"], np.ndarray) and s["x"].shape == () for s in samples)
    result = graphopt.optimize(model, passes=["cleanup"])
    assert result.report["verification"]["end_to_end"]["ok"]
