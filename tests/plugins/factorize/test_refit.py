"""plugins/factorize/refit.py: refitting V, or U and V, on the factorized model's inputs undoes compounding."""

import numpy as np
import onnx
import onnx.helper as oh

from graphopt import ir
from factorize_support import run
from graphopt_plugins.factorize.factorize_pass import Factorize, _factorized_copy
from graphopt_plugins.factorize.lowrank import fit_data_aware
from graphopt_plugins.factorize.refit import refit_factors
from graphopt_plugins.factorize.sites import find_sites


def _two_matmuls(rng):
    w1 = rng.standard_normal((32, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 32)).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W1"], ["h"], name="first"), oh.make_node("Relu", ["h"], ["r"], name="relu"),
         oh.make_node("MatMul", ["r", "W2"], ["y"], name="second")],
        "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8, 32])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [8, 32])],
        [onnx.numpy_helper.from_array(w1, "W1"), onnx.numpy_helper.from_array(w2, "W2")])
    return onnx.shape_inference.infer_shapes(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8))


def test_refit_brings_the_last_layer_back_towards_the_original_output():
    rng = np.random.default_rng(0)
    model = _two_matmuls(rng)
    samples = {"x": rng.standard_normal((6, 8, 32)).astype(np.float32)}
    sites, _ = find_sites(ir.import_graph(model), "channel", {"MatMul"})
    x = samples["x"].reshape(-1, 32).astype(np.float64)
    relu = np.maximum(x @ sites[0].weight, 0)
    # the first layer loses a quarter of its rank; the second is kept whole, so only the refit
    # can make up, from the inputs it really gets, for what the first lost
    factors = {sites[0].index: fit_data_aware(sites[0].weight, x.T @ x).factors(24),
               sites[1].index: fit_data_aware(sites[1].weight, relu.T @ relu).factors(32)}
    options = Factorize.Options()
    factorized = _factorized_copy(model, options, factors)
    variants = refit_factors(model, factorized, samples, sites, factors, rows_per_sample=1000, seed=0)
    second = variants["second"]
    assert np.array_equal(second[0][0], factors[0][0]) and np.array_equal(second[1][0], factors[1][0])
    assert variants["both"][0][0].shape == factors[0][0].shape  # the rank is kept
    feeds = {"x": samples["x"][0]}
    expected = run(model, feeds)[0]
    before = np.linalg.norm(run(factorized, feeds)[0] - expected)
    errors = {name: np.linalg.norm(run(_factorized_copy(model, options, refitted), feeds)[0] - expected)
              for name, refitted in variants.items()}
    assert errors["second"] < 0.9 * before
    # the pair refitted together can only do better on the data it was fitted to
    assert errors["both"] <= errors["second"] * 1.01
