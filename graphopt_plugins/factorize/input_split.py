"""The input-side split of a k×k Conv: a 1×1 Cin→r Conv, then the k×k r→Cout Conv.

The channel split (k×k Cin→r, then 1×1 r→Cout) can only cut a Conv with few output channels
a little: a 3×3 96→24 conv has rank 24 and saves MACs only at r = 16 (31%). Cutting its
*input* channels instead reaches r up to Cin, and where the inputs are redundant (an FPN
neck's summed feature maps) it keeps far more of the output per MAC.

With the weight in im2col form W (K×N, K = Cin·kk, rows ordered channel-major as `patches`
does, kk = kh·kw), the split is W ≈ Ũ·Ṽ with Ũ = U ⊗ I_kk (U: Cin×r, the 1×1 conv) and Ṽ
(r·kk×N, the k×k conv). The pass carries the compact pair (U, V) with V r×(kk·N).
U comes from the activation-whitened SVD of W seen as Cin×(kk·N) under the per-pixel channel
Gram (the mean of the im2col Gram's kk diagonal blocks: no second pass over the data); V, for
that U, is the exact least-squares solution on the im2col Gram. Because Ũ's columns are
nested in r, one Cholesky of ŨᵀGŨ gives that solution and its error at every rank at once.
"""

from __future__ import annotations

import numpy as np

from graphopt.statistics import robust_cholesky
from graphopt_plugins.factorize.lowrank import fit_data_aware

__all__ = ["InputSplitFit", "channel_gram", "compact_second", "expand_first", "fit_input_split", "split_cost"]

def channel_gram(gram: np.ndarray, in_channels: int, kk: int) -> np.ndarray:
    """Cin×Cin Gram of single input pixels, from the im2col Gram (K×K, K = Cin·kk)."""
    blocks = np.asarray(gram, dtype=np.float64).reshape(in_channels, kk, in_channels, kk)
    return np.einsum("atbt->ab", blocks) / kk


def expand_first(first: np.ndarray, kk: int) -> np.ndarray:
    """U (Cin×r) → Ũ = U ⊗ I_kk (K×r·kk): the 1×1 conv acting on im2col rows, columns (ρ, t)."""
    return np.kron(first, np.eye(kk))


def compact_second(second_patch: np.ndarray, rank: int, kk: int) -> np.ndarray:
    """Ṽ (r·kk×N, rows (ρ, t)) → V (r×kk·N, columns (t, n)); kk = 1 leaves it as it is."""
    return second_patch.reshape(rank, kk * second_patch.shape[1])


class InputSplitFit:
    """The input-side factors of one Conv at every rank, as `lowrank.Factorization` offers them.

    `errors[r]` is the relative output error ‖XW − XŨṼ‖/‖XW‖ on the data at rank r."""

    measured_on = "data"

    def __init__(self, left: np.ndarray, solved: np.ndarray, chol: np.ndarray, errors: np.ndarray, kk: int):
        self.left, self._solved, self._chol, self.errors, self._kk = left, solved, chol, errors, kk

    @property
    def full_rank(self) -> int:
        return self.left.shape[1]

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        size = rank * self._kk
        # the leading block of a Cholesky factor is the Cholesky factor of the leading block
        chol = self._chol[:size, :size]
        second = np.linalg.solve(chol.T, self._solved[:size])
        return self.left[:, :rank], compact_second(second, rank, self._kk)


def fit_input_split(weight: np.ndarray, gram: np.ndarray, in_channels: int, kk: int) -> InputSplitFit:
    """Fits U on the channel Gram, then V and the error at every rank on the im2col Gram."""
    weight = np.asarray(weight, dtype=np.float64)
    gram = np.asarray(gram, dtype=np.float64)
    gram = (gram + gram.T) / 2
    outputs = weight.shape[1]
    left = fit_data_aware(weight.reshape(in_channels, kk * outputs), channel_gram(gram, in_channels, kk)).left
    expanded = expand_first(left, kk)
    moment = expanded.T @ gram @ expanded
    chol = robust_cholesky(moment)
    solved = np.linalg.solve(chol, expanded.T @ gram @ weight)  # L⁻¹ŨᵀGW: row i explains energy Σ_n row²
    total = float(np.einsum("kn,kn->", weight, gram @ weight))
    explained = np.concatenate([[0.0], np.cumsum((solved**2).sum(axis=1))])[::kk]  # by rank: r·kk rows
    errors = np.sqrt(np.clip(1.0 - explained / total, 0.0, None)) if total > 0 else np.zeros(len(explained))
    return InputSplitFit(left, solved, chol, np.minimum.accumulate(errors), kk)


def split_cost(errors: np.ndarray, macs_at, multiple: int) -> float:
    """How dear a split's MACs are: the mean, over kept-MAC fractions 0.3 … 0.9, of the least
    error among ranks (multiples of `multiple`) within that fraction (1 where none is).

    `macs_at(rank)` is the split's MACs over the layer's own. The pass keeps, per Conv, the split
    with the lower cost: the allocation then trades along its curve."""
    step = max(multiple, 1)
    points = [(macs_at(rank), float(errors[rank])) for rank in range(step, len(errors), step)]
    best = [min((error for fraction, error in points if fraction <= kept), default=1.0)
            for kept in np.linspace(0.3, 0.9, 7)]
    return float(np.mean(best))
