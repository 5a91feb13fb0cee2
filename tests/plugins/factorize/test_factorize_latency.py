"""graphopt_plugins/factorize/latency.py: layers lifted out alone, timing curves, and the allocation by time.

No assertion here is on a measured time (the machine is shared): timings are given, and the
models the timer would run are checked for what they compute.
"""

import numpy as np
import onnx

from factorize_support import matmul_sites, run, single_layer
from graphopt import convert
from graphopt_plugins.factorize.latency import LayerTiming, layer_model
from graphopt_plugins.factorize.lowrank import fit_svd
from graphopt_plugins.factorize.ranks import ranks_for_target
from graphopt_plugins.factorize.sites import find_sites

RNG = np.random.default_rng(3)


def test_timing_curve_interpolates_and_never_rises_as_rank_falls():
    timing = LayerTiming(original_ms=1.0, ranks=(8, 16, 32), factorized_ms=(0.30, 0.25, 0.80))
    assert timing.ms(None) == 1.0
    assert timing.ms(16) == 0.30  # the noisy 0.25 at r16 is lifted to r8's 0.30
    assert np.isclose(timing.ms(24), 0.55)
    assert timing.ms(4) <= timing.ms(8)  # below the lowest rank: extrapolated, not above


def test_layer_model_computes_the_layer_and_its_factors():
    weight = RNG.standard_normal((8, 4, 3, 3))
    model = single_layer("Conv", [1, 4, 10, 10], weight, bias=RNG.standard_normal(8), pads=[1, 1, 1, 1])
    site = find_sites(convert.import_graph(model), "channel", {"Conv"})[0][0]
    fit = fit_svd(site.weight)
    alone = layer_model(site, (1, 4, 10, 10), 17)
    split = layer_model(site, (1, 4, 10, 10), 17, fit.factors(fit.full_rank))
    for built in (alone, split):
        onnx.checker.check_model(built, full_check=True)
    x = RNG.standard_normal((1, 4, 10, 10)).astype(np.float32)
    expected = run(model, {"x": x})[0]
    assert np.allclose(run(alone, {"x": x})[0], expected, atol=1e-5)
    assert np.allclose(run(split, {"x": x})[0], expected, atol=1e-4)  # full rank: exact
    assert [n.op_type for n in split.graph.node] == ["Conv", "Conv"]


def _sites(count):
    return matmul_sites([RNG.standard_normal((64, 64)) for _ in range(count)])


def test_allocation_skips_layers_whose_factors_are_not_faster():
    sites, fits = _sites(2)
    fits[1] = fits[0]  # equal losses: by MACs alone the tie goes to the first layer
    timings = {0: LayerTiming(1.0, (8, 16, 24), (1.1, 1.2, 1.3)),  # never faster: call overhead
               1: LayerTiming(1.0, (8, 16, 24), (0.3, 0.5, 0.7))}
    chosen = ranks_for_target(sites, fits, "macs", 0.2, 2 * 4 * 64 * 64, 0.1, 8, timings=timings)
    assert list(chosen) == [1]
    assert 0 in ranks_for_target(sites, fits, "macs", 0.2, 2 * 4 * 64 * 64, 0.1, 8)


def test_allocation_prefers_the_layer_that_saves_more_time_per_loss():
    sites, fits = _sites(2)
    fits[1] = fits[0]  # equal losses at every rank: only the time saved tells them apart
    timings = {0: LayerTiming(1.0, (8, 16, 24), (0.6, 0.7, 0.8)),
               1: LayerTiming(1.0, (8, 16, 24), (0.1, 0.3, 0.5))}
    chosen = ranks_for_target(sites, fits, "macs", 0.05, 2 * 4 * 64 * 64, 0.1, 8, timings=timings)
    assert list(chosen) == [1]


def test_the_pass_by_latency_factorizes_a_layer_that_pays_and_reports_it():
    from factorize_support import factorize

    width, rank = 512, 8
    weight = RNG.standard_normal((width, rank)) @ RNG.standard_normal((rank, width)) / rank
    model = single_layer("MatMul", [64, width], weight)
    calibration = {"x": RNG.standard_normal((4, 64, width)).astype(np.float32)}
    options = {"rank_by": "target", "target": "macs=0.5", "saving_by": "latency", "rank_multiple": 16}
    factorized, entry = factorize(model, calibration, **options)
    onnx.checker.check_model(factorized, full_check=True)
    details = entry["details"]
    # 512×512 against 16×1024 per row: no machine runs the pair slower, so it is taken
    assert entry["changed"] and details["paying_in_latency"] == 1 and details["layers"][0]["rank"] % 16 == 0
    x = calibration["x"][0]
    assert np.allclose(run(factorized, {"x": x})[0], run(model, {"x": x})[0], atol=1e-3, rtol=1e-3)
    again, second = factorize(factorized, calibration, **options)
    assert second["changed"] is False and again.SerializeToString() == factorized.SerializeToString()
