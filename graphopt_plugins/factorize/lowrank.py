"""The linear algebra of factorization: plain and activation-whitened SVD, error curves, ranks.

A layer computes `X @ W` (rows of `X` are its inputs, `W` is K×N). Factorizing replaces `W`
by `U @ V` (K×r and r×N). Plain SVD minimises the weight error ‖W − UV‖; the data-aware fit
minimises the output error ‖XW − XUV‖ over the layer's real inputs, which only the inputs'
Gram matrix `G = XᵀX` enters: with `G = LLᵀ`, the best rank-r output is the truncated SVD of
`LᵀW = PΣRᵀ`, reached by `V = R_rᵀ` and `U = W R_r` (so no inverse of `G` is ever formed).
For that fixed U, `V = R_rᵀ` is also the least-squares refit argmin_V ‖XW − XUV‖: the second
factor comes out refitted in closed form.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from graphopt.statistics import ridged, robust_cholesky, robust_eigh

__all__ = [
    "Factorization",
    "fit_svd",
    "fit_data_aware",
    "held_out_errors",
    "rank_for_energy",
    "rank_for_error",
    "round_rank",
]

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
    # ‖X(W − W_r)‖² = Σ_{i,j>r} σ_i σ_j (p_iᵀ G p_j)(q_i·q_j) = Σ_{i>r} σ_i² p_iᵀ G p_i, q orthonormal.
    energies = singular**2 * np.einsum("ij,ij->j", ridged(gram) @ left, left)
    return Factorization(left * root, root[:, None] * right, _relative_tail(energies), "data")


def fit_data_aware(weight: np.ndarray, gram: np.ndarray) -> Factorization:
    """The rank-r factors minimising ‖XW − XUV‖ for every r (activation-whitened SVD).

    Only the right singular vectors R of LᵀW are needed. When N ≤ K they are the eigenvectors
    of WᵀGW (N×N), so no K×K factorization is formed; when N > K (a wide head), the SVD of LᵀW
    with L the Cholesky factor of G is the smaller problem.
    """
    weight = np.asarray(weight, dtype=np.float64)
    whitened = ridged(gram)
    keep = min(weight.shape)
    if weight.shape[1] <= weight.shape[0]:
        moment = weight.T @ whitened @ weight
        values, vectors = robust_eigh(moment)
        order = np.argsort(values)[::-1][:keep]
        energies, right = np.clip(values[order], 0.0, None), vectors[:, order].T
    else:
        _, singular, right = np.linalg.svd(robust_cholesky(gram).T @ weight, full_matrices=False)
        energies = singular**2
    errors = _relative_tail(energies)
    errors[-1] = 0.0  # at full rank U·V = W R Rᵀ = W: R spans W's row space
    return Factorization(weight @ right.T, right, np.minimum.accumulate(errors), "data")


def held_out_errors(weight: np.ndarray, fit_gram: np.ndarray, judge_gram: np.ndarray) -> np.ndarray:
    """Relative output errors, at every rank, of the fit to `fit_gram`'s data, on `judge_gram`'s data.

    A Gram from fewer rows than K is singular: on its own data the whitened fit is exact at a rank
    as low as the row count (a squeeze-excite conv seeing one row per image looks free to cut),
    which other inputs do not bear out. With R the fit's right vectors (orthonormal, spanning
    W's row space), W − UV = W·Σ_{i≥r} rᵢrᵢᵀ, so the squared error at rank r is Σ_{i≥r} rᵢᵀ·WᵀĜW·rᵢ:
    one product for all r.
    """
    weight = np.asarray(weight, dtype=np.float64)
    right = fit_data_aware(weight, fit_gram).right
    judged = weight.T @ ridged(judge_gram) @ weight
    energies = np.einsum("in,nm,im->i", right, judged, right)
    tails = np.concatenate([np.cumsum(energies[::-1])[::-1], [0.0]])
    total = float(np.trace(judged))
    return np.sqrt(np.clip(tails / total, 0.0, None)) if total > 0 else np.zeros(len(tails))


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
