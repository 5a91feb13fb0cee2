"""Least-squares refit of each second factor on the inputs the factorized model really feeds it.

Each layer was fitted to the original model's inputs X, but once the layers before it are
factorized it sees X̂ ≠ X, and errors compound down the network. Keeping U, the refit solves
V = argmin ‖X·W − X̂·U·V‖ over the calibration data: the factorized layer is pulled back to the
original layer's output from where it actually stands. Both models run in lockstep, one sample
at a time; per site only UᵀX̂ᵀX̂U (r×r) and UᵀX̂ᵀX (r×K) are kept. Conv sites sample the same
patch positions in both models.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.activations import iter_activations
from graphopt_plugins.factorize.sites import Site
from graphopt_plugins.factorize.statistics import patches

__all__ = ["refit_second_factors"]

_RIDGE = 1e-6


def _rows(site: Site, value: np.ndarray, limit: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)  # the same positions in both models
    value = np.asarray(value, dtype=np.float32)
    if site.kind in ("matmul", "gemm"):
        rows = value.reshape(-1, value.shape[-1])
        return rows[rng.choice(len(rows), size=limit, replace=False)] if len(rows) > limit else rows
    return patches(site, value, limit, rng)


def refit_second_factors(original: onnx.ModelProto, factorized: onnx.ModelProto, samples: dict[str, np.ndarray],
                         sites: list[Site], factors: dict[int, tuple[np.ndarray, np.ndarray]],
                         rows_per_sample: int, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """New (U, V) per site in `factors` (conv_spatial sites keep theirs: their rows are not X·W)."""
    chosen = [site for site in sites if site.index in factors and site.kind != "conv_spatial"]
    if not chosen:
        return dict(factors)
    names = list(dict.fromkeys(site.input.name for site in chosen))
    hh = {site.index: 0.0 for site in chosen}
    hx = {site.index: 0.0 for site in chosen}
    stream = zip(iter_activations(original, samples, names), iter_activations(factorized, samples, names))
    for number, (before, after) in enumerate(stream):
        for site in chosen:
            first = factors[site.index][0].astype(np.float32)
            seed_here = seed + 7919 * number + site.index
            exact = _rows(site, before[site.input.name], rows_per_sample, seed_here)
            seen = _rows(site, after[site.input.name], rows_per_sample, seed_here) @ first
            hh[site.index] = hh[site.index] + (seen.T @ seen).astype(np.float64)
            hx[site.index] = hx[site.index] + (seen.T @ exact).astype(np.float64)
    refitted = dict(factors)
    for site in chosen:
        first, _ = factors[site.index]
        gram = np.asarray(hh[site.index])
        ridge = _RIDGE * max(float(np.trace(gram)) / len(gram), 1e-30)
        second = np.linalg.solve(gram + ridge * np.eye(len(gram)), np.asarray(hx[site.index]) @ site.weight)
        refitted[site.index] = (first, second)
    return refitted
