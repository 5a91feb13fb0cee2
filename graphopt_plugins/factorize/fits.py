"""Which fit each site gets: plain SVD, the whitened fit, or (`conv=auto`) the input-side split.

With data, a MatMul/Gemm/Conv gets the activation-whitened fit (lowrank.fit_data_aware), its
error curve judged on calibration samples it was not fitted to; a k×k Conv under `conv=auto`
gets whichever of the channel and the input-side split (input_split.py) leaves less error
per MAC on the data. Without data: plain SVD, of the matrix the site's split multiplies.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from graphopt_plugins.factorize.input_split import InputSplitFit, fit_input_split, split_cost
from graphopt_plugins.factorize.lowrank import Factorization, fit_data_aware, fit_svd, held_out_errors
from graphopt_plugins.factorize.sites import Site
from graphopt_plugins.factorize.statistics import LayerData

__all__ = ["fit_site"]


def fit_site(site: Site, method: str, data: LayerData | None, conv_mode: str,
             multiple: int) -> Factorization | InputSplitFit:
    """The site's factors at every rank. Under `conv=auto` this may turn a conv_channel site
    into conv_input (its `kind`, hence its MACs and its rewrite, follow the chosen split)."""
    gram = data.grams.get(site.index) if data is not None else None
    if gram is not None and not data.rows_seen[site.index]:
        gram = None
    if method != "data" or gram is None:
        if site.kind == "conv_input":
            return fit_svd(site.weight.reshape(site.split_shape))
        return fit_svd(site.weight, gram)
    if site.kind in ("conv_channel", "conv_input"):
        in_channels = site.node.inputs[1].shape[1]
        kk = site.weight.shape[0] // in_channels
        if site.kind == "conv_input":
            return fit_input_split(site.weight, gram, in_channels, kk)
    fit = fit_data_aware(site.weight, gram)
    if conv_mode == "auto" and site.kind == "conv_channel" and site.rows is not None and kk > 1:
        other = fit_input_split(site.weight, gram, in_channels, kk)
        as_input = dataclasses.replace(site, kind="conv_input")
        if split_cost(other.errors, lambda rank: as_input.macs(rank) / as_input.macs(), multiple) < \
                split_cost(fit.errors, lambda rank: site.macs(rank) / site.macs(), multiple):
            site.kind = "conv_input"
            # its errors stay in-sample: a k×k conv sees hundreds of rows per image, not one
            return other
    return _judged_on_the_other_half(site, fit, gram, data.odd_grams.get(site.index))


def _judged_on_the_other_half(site: Site, fit: Factorization, gram: np.ndarray, odd: np.ndarray | None) -> Factorization:
    """`fit` with each rank's error no lower than the two-fold held-out one (fitted on the even
    samples and judged on the odd, and back): the allocation must not take an error that only
    the samples it was fitted to bear out (lowrank.held_out_errors)."""
    if odd is None:
        return fit
    even = gram - odd
    if np.trace(odd) <= 0 or np.trace(even) <= 0:  # a single sample: no other half
        return fit
    held_out = np.sqrt((held_out_errors(site.weight, even, odd) ** 2 + held_out_errors(site.weight, odd, even) ** 2) / 2)
    errors = np.minimum.accumulate(np.maximum(fit.errors, held_out))
    errors[-1] = 0.0  # at full rank U·V = W on any data
    return dataclasses.replace(fit, errors=errors)
