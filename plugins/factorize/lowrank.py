"""The linear algebra of factorization: plain and activation-whitened SVD, error curves, ranks.

A layer computes `X @ W` (rows of `X` are its inputs, `W` is K×N). Factorizing replaces `W`
by `U @ V` (K×r and r×N). Plain SVD minimises the weight error ‖W − UV‖; the data-aware fit
minimises the output error ‖XW − XUV‖ over the layer's real inputs, which only the inputs'
Gram matrix `G = XᵀX` enters: with `G = LLᵀ`, the best rank-r output is the truncated SVD of
`LᵀW = PΣRᵀ`, reached by `V = R_rᵀ` and `U = W R_r` (so no inverse of `G` is ever formed).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "Factorization",
    "whitening",
    "fit_svd",
    "fit_data_aware",
    "rank_for_energy",
    "rank_for_error",
    "round_rank",
]

# A ridge, relative to the mean input energy, keeps directions the calibration data never
# visited from being thrown away entirely (they still carry weight energy at this scale).
_RIDGE = 1e-6


@dataclasses.dataclass
class Factorization:
    """The factors of one weight at every rank, and the output error each rank leaves.

    `errors[r]` is the relative error at rank r (‖XW − XUV‖/‖XW‖ on the data when a Gram
    matrix was given, else ‖W − UV‖/‖W‖), for r = 0 … full rank; non-increasing in r.
    """

    left: np.ndarray  # K×R: U at rank r is left[:, :r]
    right: np.ndarray  # R×N: V at rank r is right[:r]
    errors: np.ndarray  # R+1 relative errors
    measured_on: str  # "data" or "weights"

    @property
    def full_rank(self) -> int:
        return self.right.shape[0]

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        return self.left[:, :rank], self.right[:rank]


def whitening(gram: np.ndarray) -> np.ndarray:
    """A K×K matrix `S` with `SᵀS = G + ridge·I`, so that ‖XM‖_F = ‖SM‖_F for any M."""
    gram = np.asarray(gram, dtype=np.float64)
    gram = (gram + gram.T) / 2
    ridge = _RIDGE * max(float(np.trace(gram)) / len(gram), 1e-30)
    values, vectors = np.linalg.eigh(gram + ridge * np.eye(len(gram)))
    return np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T


def _relative_tail(energies: np.ndarray) -> np.ndarray:
    """sqrt(Σ_{i≥r} e_i / Σ e_i) for r = 0 … len(e)."""
    total = float(energies.sum())
    tails = np.concatenate([np.cumsum(energies[::-1])[::-1], [0.0]])
    return np.sqrt(np.clip(tails / total, 0.0, None)) if total > 0 else np.zeros(len(energies) + 1)


def fit_svd(weight: np.ndarray, gram: np.ndarray | None = None) -> Factorization:
    """Plain truncated SVD of W; errors measured on the data when `gram` is given."""
    weight = np.asarray(weight, dtype=np.float64)
    left, singular, right = np.linalg.svd(weight, full_matrices=False)
    root = np.sqrt(singular)
    if gram is None:
        return Factorization(left * root, root[:, None] * right, _relative_tail(singular**2), "weights")
    # ‖S(W − W_r)‖² = Σ_{i,j>r} σ_i σ_j (S p_i)·(S p_j) q_i·q_j = Σ_{i>r} σ_i² ‖S p_i‖², q orthonormal.
    whitened = whitening(gram) @ left
    energies = singular**2 * np.einsum("ij,ij->j", whitened, whitened)
    return Factorization(left * root, root[:, None] * right, _relative_tail(energies), "data")


def fit_data_aware(weight: np.ndarray, gram: np.ndarray) -> Factorization:
    """The rank-r factors minimising ‖XW − XUV‖ for every r (activation-whitened SVD)."""
    weight = np.asarray(weight, dtype=np.float64)
    _, singular, right = np.linalg.svd(whitening(gram) @ weight, full_matrices=False)
    return Factorization(weight @ right.T, right, _relative_tail(singular**2), "data")


def rank_for_energy(singular_energy_errors: np.ndarray, energy: float) -> int:
    """The smallest rank keeping `energy` of the squared singular values (1 − error² ≥ energy)."""
    return rank_for_error(singular_energy_errors, float(np.sqrt(max(1.0 - energy, 0.0))))


def rank_for_error(errors: np.ndarray, max_error: float) -> int:
    """The smallest rank whose relative error is at most `max_error` (errors non-increasing)."""
    within = np.nonzero(errors <= max_error + 1e-12)[0]
    return int(within[0]) if len(within) else len(errors) - 1


def round_rank(rank: int, multiple: int, full_rank: int) -> int:
    """`rank` rounded up to a multiple of `multiple` (hardware likes aligned widths), ≤ full rank."""
    if multiple <= 1:
        return max(1, min(rank, full_rank))
    return max(1, min(-(-max(rank, 1) // multiple) * multiple, full_rank))
