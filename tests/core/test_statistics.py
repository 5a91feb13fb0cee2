"""graphopt/statistics.py: im2col rows reproduce a Conv, and every solve survives the Grams real models give."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

from graphopt.statistics import (accumulate_grams, conv_output_size, gram_problem, im2col, pick_positions, ridge_solve,
                                 ridged, robust_cholesky, robust_eigh)


def _conv(x, weight, strides, pads, dilations):
    node = oh.make_node("Conv", ["x", "W"], ["y"], strides=list(strides), pads=list(pads), dilations=list(dilations))
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(weight, "W")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("strides,pads,dilations", [((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 1), (0, 2, 1, 0), (1, 2))])
def test_sampled_im2col_rows_are_the_conv_output_at_those_positions(strides, pads, dilations):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 11)).astype(np.float32)
    weight = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    expected = _conv(x, weight, strides, pads, dilations)  # (2, 5, H, W)
    assert expected.shape[2:] == conv_output_size(9, 11, (3, 3), strides, pads, dilations)
    positions = pick_positions(expected.shape[0] * expected.shape[2] * expected.shape[3], 17, rng)
    rows = im2col(x, (3, 3), strides, pads, dilations, positions)
    flat = expected.transpose(0, 2, 3, 1).reshape(-1, 5)[positions]
    np.testing.assert_allclose(rows @ weight.reshape(5, -1).T, flat, rtol=1e-4, atol=1e-4)


def _rounding_indefinite() -> np.ndarray:
    """A Gram from float32 products of nearly identical saturated features (a sigmoid gate stuck
    near 1 on every channel): semi-definite in exact arithmetic, but float32 rounding leaves
    eigenvalues below −(1e-6 × the mean diagonal), so a Cholesky with the old fixed ridge failed."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(256, 1))
    rows = ((base + 1e-4 * rng.normal(size=(256, 64))) * 100.0).astype(np.float32)
    rows[:, 0] = 100.0
    return (rows.T @ rows).astype(np.float64)


def test_the_rounding_indefinite_gram_breaks_a_plainly_ridged_cholesky():
    gram = _rounding_indefinite()
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(ridged(gram, 1e-6))
    lower = robust_cholesky(gram)
    assert np.all(np.isfinite(lower)) and np.allclose(lower @ lower.T, ridged(gram, 0.0), atol=1e-2 * np.trace(gram) / 64)


@pytest.mark.parametrize("case", ["constant", "rank_deficient", "zero", "indefinite"])
def test_ridge_solve_answers_every_degenerate_gram(case):
    rng = np.random.default_rng(1)
    if case == "constant":  # an LSTM gate stuck at 1: every row the same
        rows = np.ones((100, 16))
    elif case == "rank_deficient":  # a squeeze-excite input: fewer rows than features
        rows = rng.normal(size=(3, 16))
    elif case == "zero":  # a padded sequence, all zeros
        rows = np.zeros((10, 16))
    if case == "indefinite":
        gram = _rounding_indefinite()
    else:
        gram = rows.T @ rows
    target = gram @ rng.normal(size=(len(gram), 4))
    solved = ridge_solve(gram, target)
    assert np.all(np.isfinite(solved))
    # the ridged solution explains the target as far as the data constrains it
    residual = np.linalg.norm(gram @ solved - target) / max(np.linalg.norm(target), 1e-30)
    assert residual < 1e-2 or case == "zero"


def test_non_finite_statistics_are_refused_with_a_reason_not_a_crash():
    gram = np.eye(4)
    gram[1, 1] = np.inf
    assert "not finite" in gram_problem(gram)
    assert "zero" in gram_problem(np.zeros((4, 4)))
    assert "no calibration rows" in gram_problem(np.eye(4), rows=0)
    assert gram_problem(np.eye(4), rows=10) is None
    with pytest.raises(np.linalg.LinAlgError):
        robust_cholesky(gram)
    assert np.all(np.isfinite(ridge_solve(gram, np.ones((4, 1)))))


def test_robust_eigh_matches_eigh():
    matrix = np.random.default_rng(2).normal(size=(6, 6))
    matrix = matrix @ matrix.T
    values, vectors = robust_eigh(matrix)
    np.testing.assert_allclose((vectors * values) @ vectors.T, matrix, atol=1e-9)


def test_accumulated_grams_keep_the_odd_half_apart():
    stream = [{"x": np.full((2, 3), float(number + 1))} for number in range(4)]
    grams = accumulate_grams(stream, {"x": lambda values, _: values["x"]})
    assert grams.rows["x"] == 8
    np.testing.assert_allclose(grams.total["x"], np.full((3, 3), 2 * (1 + 4 + 9 + 16)))
    np.testing.assert_allclose(grams.odd["x"], np.full((3, 3), 2 * (4 + 16)))
