"""graphopt_plugins/factorize/rewrite.py (and sites.py): at full rank each decomposition is the original layer."""

import numpy as np
import onnx
import pytest

from factorize_support import op_counts, run, single_layer
from graphopt import convert
from graphopt.verify.metrics import tolerance_for
from graphopt_plugins.factorize.lowrank import fit_svd
from graphopt_plugins.factorize.rewrite import factorize_site
from graphopt_plugins.factorize.sites import MARK, find_sites

RNG = np.random.default_rng(0)


def _full_rank_rewrite(model, conv_mode="channel"):
    graph = convert.import_graph(model)
    sites, refused = find_sites(graph, conv_mode, {"MatMul", "Gemm", "Conv"})
    assert len(sites) == 1, refused
    site = sites[0]
    fit = fit_svd(site.weight)
    factorize_site(graph, site, *fit.factors(fit.full_rank))
    graph.nodes = [node for node in graph.nodes if node.inputs or node.outputs]
    graph.toposort(mode="nodes")
    rewritten = convert.export_model(graph, model)
    onnx.checker.check_model(rewritten, full_check=True)
    return site, rewritten


def _assert_same_outputs(model, rewritten, x_shape):
    feeds = {"x": RNG.uniform(-2, 2, x_shape).astype(np.float32)}
    tolerance = tolerance_for(np.float32)
    for expected, actual in zip(run(model, feeds), run(rewritten, feeds), strict=True):
        assert expected.shape == actual.shape
        np.testing.assert_allclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol)


def test_matmul_becomes_two_matmuls():
    model = single_layer("MatMul", [2, 5, 24], RNG.standard_normal((24, 16)) * 0.3)
    site, rewritten = _full_rank_rewrite(model)
    assert site.kind == "matmul" and site.full_rank == 16
    assert op_counts(rewritten) == {"MatMul": 2}
    assert all(MARK in node.name for node in rewritten.graph.node)
    _assert_same_outputs(model, rewritten, [2, 5, 24])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_keeps_bias_alpha_and_beta_on_the_second_factor(trans_b):
    weight = RNG.standard_normal((16, 24) if trans_b else (24, 16)) * 0.3
    model = single_layer("Gemm", [4, 24], weight, bias=RNG.standard_normal(16), alpha=0.5, beta=2.0, transB=trans_b)
    site, rewritten = _full_rank_rewrite(model)
    assert site.kind == "gemm"
    assert op_counts(rewritten) == {"MatMul": 1, "Gemm": 1}
    _assert_same_outputs(model, rewritten, [4, 24])


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"pads": [0, 1, 2, 1], "strides": [2, 1], "dilations": [1, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
])
def test_conv_channel_decomposition_matches_at_full_rank(attrs):
    model = single_layer("Conv", [1, 6, 9, 11], RNG.standard_normal((12, 6, 3, 3)) * 0.3, bias=RNG.standard_normal(12),
                         **attrs)
    site, rewritten = _full_rank_rewrite(model)
    assert site.kind == "conv_channel" and site.weight.shape == (54, 12)
    kernels = [tuple(a.ints) for node in rewritten.graph.node for a in node.attribute if a.name == "kernel_shape"]
    assert kernels == [(3, 3), (1, 1)]
    _assert_same_outputs(model, rewritten, [1, 6, 9, 11])


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"pads": [2, 0, 1, 2], "strides": [2, 3], "dilations": [2, 1]},
])
def test_conv_spatial_decomposition_matches_at_full_rank(attrs):
    model = single_layer("Conv", [2, 4, 10, 12], RNG.standard_normal((5, 4, 3, 3)) * 0.3, bias=RNG.standard_normal(5),
                         **attrs)
    site, rewritten = _full_rank_rewrite(model, conv_mode="spatial")
    assert site.kind == "conv_spatial" and site.full_rank == 12  # min(Cin·kh, Cout·kw)
    kernels = [tuple(a.ints) for node in rewritten.graph.node for a in node.attribute if a.name == "kernel_shape"]
    assert kernels == [(3, 1), (1, 3)]
    _assert_same_outputs(model, rewritten, [2, 4, 10, 12])


def test_depthwise_and_grouped_convs_are_not_sites():
    depthwise = single_layer("Conv", [1, 8, 6, 6], RNG.standard_normal((8, 1, 3, 3)), group=8, pads=[1, 1, 1, 1])
    sites, refused = find_sites(convert.import_graph(depthwise), "channel", {"Conv"})
    assert sites == [] and refused == {"grouped or depthwise Conv": 1}
