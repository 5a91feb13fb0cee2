"""Least-squares refit of the factors on the inputs the factorized model really feeds them.

Each layer was fitted to the original model's inputs X, but once the layers before it are
factorized it sees X̂ ≠ X, and errors compound down the network. The refit pulls each
factorized layer back to the original layer's output X·W from where it actually stands:
either V alone (U kept: V = argmin ‖X·W − X̂·U·V‖) or both factors (the best rank-r map from
X̂ to X·W). Both models run in lockstep, one sample at a time; per site X̂ᵀX̂ and X̂ᵀX (K×K)
are kept. Conv sites sample the same patch positions in both models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx

from graphopt.activations import iter_activations
from graphopt_plugins.factorize.input_split import second_for
from graphopt_plugins.factorize.lowrank import fit_data_aware
from graphopt_plugins.factorize.sites import Site
from graphopt_plugins.factorize.statistics import patches

__all__ = ["refit_factors"]

_RIDGE = 1e-6


def _rows(site: Site, value: np.ndarray, limit: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)  # the same positions in both models
    value = np.asarray(value, dtype=np.float32)
    if site.kind in ("matmul", "gemm"):
        rows = value.reshape(-1, value.shape[-1])
        return rows[rng.choice(len(rows), size=limit, replace=False)] if len(rows) > limit else rows
    return patches(site, value, limit, rng)


def refit_factors(original: onnx.ModelProto, factorized: onnx.ModelProto, samples: dict[str, np.ndarray],
                  sites: list[Site], factors: dict[int, tuple[np.ndarray, np.ndarray]], rows_per_sample: int,
                  seed: int, track: Callable[[Iterable], Iterable] = iter) -> dict[str, dict[int, tuple]]:
    """Two refits from one lockstep run: `{"second": ..., "both": ...}`, each new (U, V) per site.

    `second` keeps U and solves V. `both` refits the pair: the rank-r map from X̂ closest to
    X·W is the whitened truncation (`fit_data_aware`) of the full least-squares map
    W* = Ĝ⁻¹·X̂ᵀX·W, because ‖XW − X̂M‖² = ‖XW − X̂W*‖² + ‖X̂(W* − M)‖² for every M.
    Both need only Ĝ = X̂ᵀX̂ and X̂ᵀX (K×K) per site. conv_spatial sites keep their factors
    (their rows are not X·W); conv_input sites get V refitted in both (U is a 1×1 conv, whose
    pair refit has no closed form).
    """
    chosen = [site for site in sites if site.index in factors and site.kind != "conv_spatial"]
    if not chosen:
        return {"second": dict(factors), "both": dict(factors)}
    names = list(dict.fromkeys(site.input.name for site in chosen))
    seen_gram = {site.index: 0.0 for site in chosen}  # X̂ᵀX̂
    cross = {site.index: 0.0 for site in chosen}  # X̂ᵀX
    stream = zip(iter_activations(original, samples, names), iter_activations(factorized, samples, names))
    for number, (before, after) in enumerate(track(stream)):
        for site in chosen:
            seed_here = seed + 7919 * number + site.index
            exact = _rows(site, before[site.input.name], rows_per_sample, seed_here)
            seen = _rows(site, after[site.input.name], rows_per_sample, seed_here)
            seen_gram[site.index] = seen_gram[site.index] + (seen.T @ seen).astype(np.float64)
            cross[site.index] = cross[site.index] + (seen.T @ exact).astype(np.float64)
    second, both = dict(factors), dict(factors)
    for site in chosen:
        first, _ = factors[site.index]
        gram, target = np.asarray(seen_gram[site.index]), np.asarray(cross[site.index]) @ site.weight  # X̂ᵀXW
        if site.kind == "conv_input":  # U is a 1×1 conv: only V is refitted, in im2col space
            second[site.index] = both[site.index] = (first, second_for(first, gram, target, len(gram) // len(first)))
            continue
        small = first.T @ gram @ first
        second[site.index] = (first, np.linalg.solve(_ridged(small), first.T @ target))
        best_map = np.linalg.solve(_ridged(gram), target)
        both[site.index] = fit_data_aware(best_map, gram).factors(first.shape[1])
    return {"second": second, "both": both}


def _ridged(gram: np.ndarray) -> np.ndarray:
    ridge = _RIDGE * max(float(np.trace(gram)) / len(gram), 1e-30)
    return gram + ridge * np.eye(len(gram))
