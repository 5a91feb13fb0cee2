"""prune on statistics real models give (issue 22.4): dead and duplicated channels are regularised, never a crash."""

from __future__ import annotations

import numpy as np
from onnx import helper

from prune_support import build, cosine, feeds_for, prune, weight


def _dead_and_duplicated():
    """up → Relu → down, where 8 of up's 64 channels are dead (zero weights: a ReLU that never fires)
    and 8 more duplicate others: the Gram of down's input is singular, with damp=0 unridged."""
    up = weight(32, 64, dead_cols=range(8), axis_cols=1)
    up[:, 8:16] = up[:, 16:24]
    nodes = [
        helper.make_node("MatMul", ["h", "w1"], ["a"], name="up"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="down"),
    ]
    return build(nodes, {"h": [1, 16, 32]}, ["y"], {"w1": up, "w2": weight(64, 32)})


def test_channel_refit_on_a_singular_gram_is_ridged_not_raised():
    model = _dead_and_duplicated()
    calibration, held_out = feeds_for(model, 16, seed=1), feeds_for(model, 4, seed=9)
    pruned, details = prune(model, calibration, structured="channels", ratio=0.25, damp=0.0, tune_damp=False,
                            reconstruct="true", backoff=-1)
    assert details["changed"] and details["channels_removed"] > 0
    assert cosine(model, pruned, held_out) > 0.9


def test_sparsegpt_on_a_singular_hessian_is_ridged_not_raised():
    model = _dead_and_duplicated()
    calibration, held_out = feeds_for(model, 16, seed=1), feeds_for(model, 4, seed=9)
    pruned, details = prune(model, calibration, structured="none", sparsity=0.5, damp=0.0, reconstruct="true", backoff=-1)
    assert details["changed"] and details["layers_pruned"] == 2
    assert np.isfinite(cosine(model, pruned, held_out)) and cosine(model, pruned, held_out) > 0.8
