"""How much each layer's factorization costs the model's outputs, measured once per layer.

A layer's own output error e(r) is known at every rank from its fit, but not what that error
does downstream: a residual branch or a normalization may hide it, a head may amplify it. The
model is run with that one layer factorized at a probe rank (where its own error is about
`probe_error`, within what saves MACs), and the end-to-end loss (1 − worst output cosine) is
taken to scale as k·e(r)², k measured at the probe. The global allocation then weighs each
layer's squared error by its k — AIMET's per-layer evaluation, one run per layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from graphopt_plugins.factorize.lowrank import Factorization, rank_for_error, round_rank
from graphopt_plugins.factorize.sites import Site

__all__ = ["measure_sensitivity"]

logger = logging.getLogger(__name__)


def measure_sensitivity(sites: Iterable[Site], fits: dict[int, Factorization], loss_with: Callable[[dict], float],
                        margin: float, multiple: int, probe_error: float = 0.1) -> dict[int, float]:
    """k per site: `loss_with({index: (U, V)})` is the end-to-end loss with only that site factorized."""
    weights = {}
    for site in sites:
        fit = fits[site.index]
        top = site.max_saving_rank(margin, multiple)
        if top <= 0:
            continue
        rank = min(top, round_rank(rank_for_error(fit.errors, probe_error), multiple, fit.full_rank))
        error = float(fit.errors[rank])
        if error <= 1e-6:
            weights[site.index] = 0.0
            continue
        loss = max(loss_with({site.index: fit.factors(rank)}), 0.0)
        weights[site.index] = loss / error**2
        logger.debug("factorize: %s at rank %d: layer error %.4f, model loss %.3g", site.name, rank, error, loss)
    return weights
