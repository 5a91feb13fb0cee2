"""tune_damp in the structured refit (graphopt_plugins/prune/refit.py `_best_damp`): the ridge is chosen by
two-fold cross-validation, and a refit that only fits noise in its own samples is refused."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt_plugins.prune.refit import SinkRecord, _best_damp, _refit

_FEATURES, _KEPT = 24, 12


def _case(removed_from_kept: bool, rows: int = 40, seed: int = 0):
    """A MatMul sink that lost features 12..23; they are noise, or a mix of the kept 0..11."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(_FEATURES, 8))
    mix = rng.normal(size=(_KEPT, _FEATURES - _KEPT))
    folds = []
    for _ in range(2):
        kept = rng.normal(size=(rows, _KEPT))
        removed = kept @ mix + 0.01 * rng.normal(size=(rows, _FEATURES - _KEPT)) if removed_from_kept else rng.normal(size=(rows, _FEATURES - _KEPT))
        joint = np.concatenate([kept, removed, kept, np.ones((rows, 1))], axis=1)  # [x_o, x_p, 1]
        folds.append(joint.T @ joint)
    node = gs.Node("MatMul", inputs=[gs.Variable("x"), gs.Constant("w", weight[:_KEPT].astype(np.float32))], outputs=[gs.Variable("y")])
    return SinkRecord(node, "x", -1, 0, weight, None), folds


def test_noise_in_lost_features_is_not_refit():
    record, (even, odd) = _case(removed_from_kept=False)
    assert _best_damp(record, even, odd) is None
    _refit(record, even + odd, None)
    assert record.node.inputs[1].name == "w"  # the plain cut stays
    # without the held-out check, least squares "improves" its own samples by fitting the noise
    _refit(record, even + odd, 1e-4)
    assert record.errors[1] < record.errors[0] and record.node.inputs[1].name == "w.refit"


def test_recoverable_lost_features_are_refit_with_a_small_ridge():
    record, (even, odd) = _case(removed_from_kept=True)
    damp = _best_damp(record, even, odd)
    assert damp is not None and damp <= 1e-2
    _refit(record, even + odd, damp)
    assert record.errors[1] < 0.01 * record.errors[0]
