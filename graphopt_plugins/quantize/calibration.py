"""Activation ranges from calibration data: minmax, percentile, entropy (KL) and mse.

Each tensor is observed sample by sample (one sample's intermediates in memory at a time):
its exact min and max, and a random subsample of at most `_KEEP` values per sample, from
which percentile, entropy and mse choose a clipping range. minmax uses the exact extremes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from graphopt.activations import iter_activations
from graphopt_plugins.quantize.numerics import fake_quantize

__all__ = ["METHODS", "collect_ranges", "choose_range"]

METHODS = ("minmax", "percentile", "entropy", "mse")
_KEEP = 4096
_BINS = 2048


def collect_ranges(model: onnx.ModelProto, samples: Mapping[str, np.ndarray], names: Sequence[str], method: str,
                   percentile: float, signed: bool, seed: int = 0,
                   track: Callable[[Iterable, str, int], Iterable] = lambda items, desc, total: items,
                   ) -> dict[str, tuple[float, float]]:
    """`{tensor: (low, high)}` for every name, observed over all samples (`track` draws the progress)."""
    rng = np.random.default_rng(seed)
    lows = {name: np.inf for name in names}
    highs = {name: -np.inf for name in names}
    kept: dict[str, list[np.ndarray]] = {name: [] for name in names}
    count = len(next(iter(samples.values()))) if samples else 0
    for values in track(iter_activations(model, samples, list(names)), "quantize: calibrating", count):
        for name in names:
            flat = np.asarray(values[name], np.float32).ravel()
            if not flat.size:
                continue
            lows[name] = min(lows[name], float(flat.min()))
            highs[name] = max(highs[name], float(flat.max()))
            if method != "minmax":
                kept[name].append(flat if flat.size <= _KEEP else rng.choice(flat, _KEEP, replace=False))
    ranges = {}
    for name in names:
        low, high = (lows[name], highs[name]) if np.isfinite(lows[name]) else (0.0, 0.0)
        if method != "minmax" and kept[name]:
            low, high = choose_range(np.concatenate(kept[name]), low, high, method, percentile, signed)
        ranges[name] = (low, high)
    return ranges


def choose_range(values: np.ndarray, low: float, high: float, method: str, percentile: float,
                 signed: bool) -> tuple[float, float]:
    """A clipping range inside [low, high] for `values` by `method`."""
    if method == "percentile":
        return (float(np.percentile(values, 100.0 - percentile)) if low < 0 else low,
                float(np.percentile(values, percentile)) if high > 0 else high)
    if method == "entropy":
        threshold = _kl_threshold(np.abs(values), max(abs(low), abs(high)), 128 if signed or low < 0 else 256)
        return max(low, -threshold), min(high, threshold)
    if method == "mse":
        return _mse_range(values, low, high, signed)
    return low, high


def _kl_threshold(magnitudes: np.ndarray, amax: float, levels: int) -> float:
    """The |x| threshold whose clipped, `levels`-level histogram is closest in KL to the full one."""
    if amax <= 0:
        return amax
    hist, edges = np.histogram(magnitudes, bins=_BINS, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best, best_divergence = _BINS, np.inf
    for stop in range(levels, _BINS + 1, 16):
        kept = hist[:stop]
        reference = kept.copy()
        reference[stop - 1] += hist[stop:].sum()  # the clipped tail lands on the last bin
        # `levels` groups of bins; each group spreads its mass evenly over its non-empty bins.
        starts = np.linspace(0, stop, levels + 1).astype(int)[:-1]
        present = (kept > 0).astype(np.float64)
        mean = np.add.reduceat(kept, starts) / np.maximum(np.add.reduceat(present, starts), 1.0)
        candidate = present * np.repeat(mean, np.diff(np.append(starts, stop)))
        p = reference / reference.sum()
        q = candidate / max(candidate.sum(), 1e-12)
        mask = p > 0
        divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if divergence < best_divergence:
            best, best_divergence = stop, divergence
    return float(edges[best])


def _mse_range(values: np.ndarray, low: float, high: float, signed: bool) -> tuple[float, float]:
    """The shrink of [low, high] (by a common factor) with the least mean squared Q/DQ error."""
    best, best_error = (low, high), np.inf
    for factor in np.linspace(0.2, 1.0, 41):
        candidate = (low * factor, high * factor)
        error = float(np.mean((fake_quantize(values, *candidate, signed) - values) ** 2))
        if error < best_error:
            best, best_error = candidate, error
    return float(best[0]), float(best[1])
