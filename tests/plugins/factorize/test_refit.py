"""graphopt_plugins/factorize/refit.py: refitting each V in order, on the inputs the refitted layers before it feed it."""

import numpy as np
import onnx
import onnx.helper as oh

from graphopt import convert
from factorize_support import run
from graphopt_plugins.factorize.factorize_pass import Factorize
from graphopt_plugins.factorize.rewrite import factorized_copy
from graphopt_plugins.factorize.lowrank import fit_data_aware
from graphopt_plugins.factorize.refit import refit_in_order
from graphopt_plugins.factorize.sites import find_sites


def _chain(rng, layers=3, width=32):
    """x → MatMul → Relu → MatMul → Relu → … → y, `layers` MatMuls."""
    nodes, weights, name = [], [], "x"
    for index in range(layers):
        weights.append(onnx.numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"W{index}"))
        nodes.append(oh.make_node("MatMul", [name, f"W{index}"], [f"h{index}"], name=f"layer{index}"))
        name = f"h{index}"
        if index < layers - 1:
            nodes.append(oh.make_node("Relu", [name], [f"r{index}"], name=f"relu{index}"))
            name = f"r{index}"
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8, width])],
                          [oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [8, width])], weights)
    return onnx.shape_inference.infer_shapes(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8))


def _numpy_forward(sites, factors, x):
    """Each layer's input and the output, with `factors` (None: the original weights)."""
    inputs = []
    for number, site in enumerate(sites):
        inputs.append(x)
        x = x @ (site.weight if factors is None else factors[site.index][0] @ factors[site.index][1])
        x = np.maximum(x, 0) if number < len(sites) - 1 else x
    return inputs, x


def test_refit_goes_in_order_each_layer_on_the_refitted_inputs():
    rng = np.random.default_rng(0)
    model = _chain(rng)
    samples = {"x": rng.standard_normal((6, 8, 32)).astype(np.float32)}
    sites, _ = find_sites(convert.import_graph(model), "channel", {"MatMul"})
    x = samples["x"].reshape(-1, 32).astype(np.float64)
    exact_inputs, expected = _numpy_forward(sites, None, x)
    factors = {site.index: fit_data_aware(site.weight, rows.T @ rows).factors(20)
               for site, rows in zip(sites, exact_inputs)}
    options = Factorize.Options()
    refitted = refit_in_order(model, lambda chosen: factorized_copy(model, options.conv, options.op_set(), chosen), samples, sites, factors,
                              rows_per_sample=1000, seed=0)
    for site in sites:
        assert np.array_equal(refitted[site.index][0], factors[site.index][0])  # U kept
    # what the refit must be: layer k's V solved on the inputs that the refitted layers before it give
    wanted = dict(factors)
    for number, site in enumerate(sites):
        seen = _numpy_forward(sites, wanted, x)[0][number]
        first = factors[site.index][0]
        hidden = seen @ first
        wanted[site.index] = (first, np.linalg.lstsq(hidden, exact_inputs[number] @ site.weight, rcond=None)[0])
        np.testing.assert_allclose(refitted[site.index][1], wanted[site.index][1], rtol=1e-3, atol=1e-3)
    before = np.linalg.norm(_numpy_forward(sites, factors, x)[1] - expected)
    after = np.linalg.norm(_numpy_forward(sites, refitted, x)[1] - expected)
    assert after < 0.8 * before


def test_refit_brings_the_model_back_in_onnxruntime():
    rng = np.random.default_rng(1)
    model = _chain(rng, layers=2)
    samples = {"x": rng.standard_normal((6, 8, 32)).astype(np.float32)}
    sites, _ = find_sites(convert.import_graph(model), "channel", {"MatMul"})
    x = samples["x"].reshape(-1, 32).astype(np.float64)
    relu = np.maximum(x @ sites[0].weight, 0)
    # the first layer loses a quarter of its rank, the second is kept whole: only the refit of the
    # second, from the inputs it really gets, can make up for what the first lost
    factors = {0: fit_data_aware(sites[0].weight, x.T @ x).factors(24),
               1: fit_data_aware(sites[1].weight, relu.T @ relu).factors(32)}
    options = Factorize.Options()
    refitted = refit_in_order(model, lambda chosen: factorized_copy(model, options.conv, options.op_set(), chosen), samples, sites, factors,
                              rows_per_sample=1000, seed=0)
    feeds = {"x": samples["x"][0]}
    expected = run(model, feeds)[0]
    before = np.linalg.norm(run(factorized_copy(model, options.conv, options.op_set(), factors), feeds)[0] - expected)
    after = np.linalg.norm(run(factorized_copy(model, options.conv, options.op_set(), refitted), feeds)[0] - expected)
    assert after < 0.9 * before


def test_bias_is_refitted_with_v_on_a_conv():
    from factorize_support import single_layer

    rng = np.random.default_rng(2)
    weight = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    model = single_layer("Conv", [1, 8, 6, 6], weight, bias=rng.standard_normal(16), pads=[1, 1, 1, 1])
    # inputs with a mean: a truncated layer is then off on average too, which a bias can take back
    samples = {"x": (rng.standard_normal((4, 1, 8, 6, 6)) + 1.5).astype(np.float32)}
    sites, _ = find_sites(convert.import_graph(model), "channel", {"Conv"})
    options = Factorize.Options(conv="channel")
    factors = {0: fit_data_aware(sites[0].weight, np.eye(72)).factors(4)}  # fitted as if inputs were white
    build = lambda chosen: factorized_copy(model, options.conv, options.op_set(), chosen)  # noqa: E731
    plain = refit_in_order(model, build, samples, sites, factors, rows_per_sample=100, seed=0)
    biased = refit_in_order(model, build, samples, sites, factors, rows_per_sample=100, seed=0, bias=True)
    assert len(plain[0]) == 2 and len(biased[0]) == 3
    def per_channel_mean_error(refitted):
        errors = [run(build(refitted), {"x": x})[0] - run(model, {"x": x})[0] for x in samples["x"]]
        return np.abs(np.mean(errors, axis=(0, 1, 3, 4)))

    def error(refitted):
        return sum(np.linalg.norm(run(build(refitted), {"x": x})[0] - run(model, {"x": x})[0]) for x in samples["x"])

    assert error(biased) < error(plain) < 0.9 * error(factors)
    # over the data it was fitted to, the layer is no longer off on average in any channel
    assert per_channel_mean_error(biased).max() < 1e-3 * per_channel_mean_error(plain).max()
