"""graphopt_plugins/factorize/input_split.py: the 1×1 Cin→r then k×k r→Cout split, its fit, and when `conv=auto` takes it."""

import dataclasses

import numpy as np
import onnx
import pytest

from factorize_support import factorize, op_counts, run, single_layer
from graphopt import convert
from graphopt.verify.metrics import output_metrics, tolerance_for
from graphopt_plugins.factorize.input_split import expand_first, fit_input_split, split_cost
from graphopt_plugins.factorize.lowrank import fit_data_aware, fit_svd
from graphopt_plugins.factorize.rewrite import factorize_site
from graphopt_plugins.factorize.sites import find_sites
from graphopt_plugins.factorize.statistics import patches

RNG = np.random.default_rng(0)


def _redundant_inputs(n, channels, hidden, size, seed=1):
    """(n, 1, channels, size, size) images whose channels mix only `hidden` underlying maps (the same
    mixing whatever the seed), plus a little noise."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).standard_normal((channels, hidden))
    maps = rng.standard_normal((n, 1, hidden, size, size))
    x = np.einsum("ch,nbhyx->nbcyx", mixing, maps) + 0.01 * rng.standard_normal((n, 1, channels, size, size))
    return {"x": x.astype(np.float32)}


def _rows_and_gram(site, x, rows=4000):
    rows_ = np.concatenate([patches(site, sample, rows, np.random.default_rng(0)) for sample in x]).astype(np.float64)
    return rows_, rows_.T @ rows_


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"pads": [0, 1, 2, 1], "strides": [2, 1], "dilations": [1, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
])
def test_input_split_matches_the_conv_at_full_rank(attrs):
    model = single_layer("Conv", [1, 6, 9, 11], RNG.standard_normal((12, 6, 3, 3)) * 0.3, bias=RNG.standard_normal(12),
                         **attrs)
    graph = convert.import_graph(model)
    site = find_sites(graph, "input", {"Conv"})[0][0]
    assert site.kind == "conv_input" and site.split_shape == (6, 108) and site.full_rank == 6
    fit = fit_svd(site.weight.reshape(site.split_shape))
    factorize_site(graph, site, *fit.factors(6))
    graph.nodes = [node for node in graph.nodes if node.inputs or node.outputs]
    graph.toposort(mode="nodes")
    rewritten = convert.export_model(graph, model)
    onnx.checker.check_model(rewritten, full_check=True)
    kernels = [tuple(a.ints) for node in rewritten.graph.node for a in node.attribute if a.name == "kernel_shape"]
    assert kernels == [(1, 1), (3, 3)]
    feeds = {"x": RNG.uniform(-2, 2, (1, 6, 9, 11)).astype(np.float32)}
    tolerance = tolerance_for(np.float32)
    np.testing.assert_allclose(run(rewritten, feeds)[0], run(model, feeds)[0], rtol=tolerance.rtol, atol=tolerance.atol)


def test_input_split_macs_count_the_1x1_on_every_input_pixel():
    model = single_layer("Conv", [1, 8, 10, 10], RNG.standard_normal((4, 8, 3, 3)), strides=[2, 2], pads=[1, 1, 1, 1])
    site = find_sites(convert.import_graph(model), "input", {"Conv"})[0][0]
    site.rows, site.input_pixels = 25, 100
    assert site.macs() == 25 * 72 * 4
    assert site.macs(2) == 100 * 2 * 8 + 25 * 2 * 36
    assert site.params(2) == 2 * (8 + 36)


def test_fit_errors_are_the_real_output_errors_and_v_is_least_squares():
    weight = RNG.standard_normal((4, 16, 3, 3))
    model = single_layer("Conv", [1, 16, 8, 8], weight, pads=[1, 1, 1, 1])
    site = find_sites(convert.import_graph(model), "input", {"Conv"})[0][0]
    rows, gram = _rows_and_gram(site, _redundant_inputs(6, 16, 5, 8)["x"])
    fit = fit_input_split(site.weight, gram, 16, 9)
    exact = rows @ site.weight
    for rank in (3, 5, 8):
        first, second = fit.factors(rank)
        approx = rows @ np.kron(first, np.eye(9)) @ second.reshape(rank * 9, 4)
        measured = np.linalg.norm(exact - approx) / np.linalg.norm(exact)
        assert np.isclose(measured, fit.errors[rank], rtol=0.1, atol=1e-4)  # up to the ridge
        # V is the least-squares answer for this U
        hidden = rows @ expand_first(first, 9)
        best = hidden @ np.linalg.lstsq(hidden, exact, rcond=None)[0]
        assert measured < np.linalg.norm(exact - best) / np.linalg.norm(exact) + 1e-4
    # five underlying maps: rank 5 already explains the outputs (the rest is the noise)
    assert fit.errors[5] < 0.02 < fit.errors[3]
    assert fit.errors[16] < 5e-3  # full rank: exact up to the ridge


def test_split_cost_prefers_the_curve_with_less_error_per_mac():
    errors = np.linspace(1.0, 0.0, 17)
    assert split_cost(errors, lambda rank: rank / 16, 4) < split_cost(errors, lambda rank: rank / 8, 4)


def test_auto_takes_the_input_split_where_the_inputs_are_redundant():
    # 3×3 32→8 conv on inputs mixing 6 maps: the channel split can barely cut (rank ≤ 8), the input split can
    weight = RNG.standard_normal((8, 32, 3, 3))
    model = single_layer("Conv", [1, 32, 12, 12], weight, bias=RNG.standard_normal(8), pads=[1, 1, 1, 1])
    calibration = _redundant_inputs(6, 32, 6, 12)
    factorized, entry = factorize(model, calibration, conv="auto", rank_by="max_error", max_error=0.05,
                                  rank_multiple=4, budget="cos=0.999")
    assert entry["changed"] is True
    layer = entry["details"]["layers"][0]
    assert layer["kind"] == "conv_input" and layer["rank"] == 8
    assert layer["macs_after"] < 0.5 * layer["macs_before"]
    assert op_counts(factorized) == {"Conv": 2}
    feeds = {"x": _redundant_inputs(1, 32, 6, 12, seed=7)["x"][0]}  # held out
    assert output_metrics(run(model, feeds)[0], run(factorized, feeds)[0])["cosine"] >= 0.999
    again, entry = factorize(factorized, calibration, conv="auto", rank_by="max_error", max_error=0.05, rank_multiple=4)
    assert entry["changed"] is False


def test_auto_keeps_the_channel_split_where_the_outputs_are_redundant():
    # 3×3 8→32 conv of output rank 4 on white inputs: only the output side is low-rank
    weight = (RNG.standard_normal((32, 4)) @ RNG.standard_normal((4, 8 * 9))).reshape(32, 8, 3, 3)
    model = single_layer("Conv", [1, 8, 12, 12], weight, pads=[1, 1, 1, 1])
    calibration = {"x": RNG.standard_normal((4, 1, 8, 12, 12)).astype(np.float32)}
    _, entry = factorize(model, calibration, conv="auto", rank_by="max_error", max_error=0.05, rank_multiple=4)
    layer = entry["details"]["layers"][0]
    assert layer["kind"] == "conv_channel" and layer["rank"] == 4


def test_input_split_site_keeps_the_im2col_weight_for_the_data():
    model = single_layer("Conv", [1, 6, 5, 5], RNG.standard_normal((3, 6, 3, 3)), pads=[1, 1, 1, 1])
    channel = find_sites(convert.import_graph(model), "channel", {"Conv"})[0][0]
    inputs = find_sites(convert.import_graph(model), "input", {"Conv"})[0][0]
    np.testing.assert_array_equal(channel.weight, inputs.weight)  # the same Gram serves both splits
    assert dataclasses.replace(channel, kind="conv_input").split_shape == (6, 27)
    assert fit_data_aware(channel.weight, np.eye(54)).full_rank == channel.full_rank == 3


def test_latency_timing_builds_the_input_split_alone():
    from graphopt_plugins.factorize.latency import layer_model

    model = single_layer("Conv", [1, 4, 10, 10], RNG.standard_normal((8, 4, 3, 3)), bias=RNG.standard_normal(8),
                         pads=[1, 1, 1, 1])
    site = find_sites(convert.import_graph(model), "input", {"Conv"})[0][0]
    split = layer_model(site, (1, 4, 10, 10), 17, fit_svd(site.weight.reshape(site.split_shape)).factors(4))
    kernels = [tuple(a.ints) for node in split.graph.node for a in node.attribute if a.name == "kernel_shape"]
    assert kernels == [(1, 1), (3, 3)]
    x = RNG.standard_normal((1, 4, 10, 10)).astype(np.float32)
    assert np.allclose(run(split, {"x": x})[0], run(model, {"x": x})[0], atol=1e-4)  # full rank: exact
