"""Layer-wise reconstruction from calibration statistics: no training loop.

- Structured: the removed input features of a sink layer are regressed on the kept ones (ridge
  least squares on the Gram of its input, with an intercept where the layer has a bias); the
  regression is folded into the sink's kept weights (and bias). For Gemm/MatMul this is exactly
  the least-squares refit of the sink's output to the unpruned output; for a Conv it is the
  per-position version (the intercept is exact away from zero padding).
- Unstructured: SparseGPT (Frantar & Alistarh, 2023), an OBS update per column block: each
  weight pruned in a column is compensated on the not-yet-processed columns through the inverse
  Hessian `(X^T X + damp)^-1` of the layer input, all output rows at once.
"""

from __future__ import annotations

import numpy as np

from graphopt.statistics import quadratic_form, ridge_solve, robust_cholesky

__all__ = ["as_rows", "from_rows", "regress_removed", "fold_regression", "regression_errors", "sparsegpt", "output_error"]


def as_rows(weight: np.ndarray, in_axis: int) -> np.ndarray:
    """(rows, features): the weight with its input-feature axis last, everything else as rows."""
    moved = np.moveaxis(weight, in_axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def from_rows(rows: np.ndarray, like: np.ndarray, in_axis: int) -> np.ndarray:
    moved_shape = np.moveaxis(like, in_axis, -1).shape
    return np.moveaxis(rows.reshape(moved_shape), -1, in_axis).astype(like.dtype)


def regress_removed(gram: np.ndarray, kept: np.ndarray, removed: np.ndarray, intercept: bool, damp: float) -> np.ndarray:
    """Coefficients (K[+1], R) predicting removed features from kept ones (last row: intercept)."""
    basis = np.concatenate([kept, [len(gram) - 1]]) if intercept else kept
    return ridge_solve(gram[np.ix_(basis, basis)], gram[np.ix_(basis, removed)], relative=damp)


def fold_regression(rows: np.ndarray, kept: np.ndarray, removed: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Sink weight rows with the regression folded into the kept columns; the bias term per row, if any."""
    folded = rows.astype(np.float64).copy()
    lost = folded[:, removed]
    folded[:, kept] += lost @ coef[: len(kept)].T
    bias = lost @ coef[len(kept)] if len(coef) > len(kept) else None
    return folded, bias


def regression_errors(gram: np.ndarray, rows: np.ndarray, kept: np.ndarray, removed: np.ndarray, coef: np.ndarray | None) -> tuple[float, float]:
    """Relative output energy the sink loses: dropping the features plainly, and after the refit."""
    features = len(gram) - 1
    w = rows.astype(np.float64)
    total = float(quadratic_form(w, gram[:features, :features], w)) or 1.0
    lost = w[:, removed]
    plain = float(quadratic_form(lost, gram[np.ix_(removed, removed)], lost)) / total
    if coef is None:
        return plain, plain
    basis = np.concatenate([kept, [features]]) if len(coef) > len(kept) else kept
    # residual of the removed features: x_R - coef^T x_basis
    cross = gram[np.ix_(basis, removed)]
    residual = gram[np.ix_(removed, removed)] - cross.T @ coef - coef.T @ cross + coef.T @ gram[np.ix_(basis, basis)] @ coef
    return plain, float(quadratic_form(lost, residual, lost)) / total


def output_error(rows_before: np.ndarray, rows_after: np.ndarray, hessian: np.ndarray) -> float:
    """Relative output energy of `(W_after - W_before) x` on the calibration rows."""
    delta = (rows_after - rows_before).astype(np.float64)
    total = float(quadratic_form(rows_before, hessian, rows_before)) or 1.0
    return float(quadratic_form(delta, hessian, delta)) / total


def sparsegpt(rows: np.ndarray, hessian: np.ndarray, sparsity: float, prune_n: int = 0, m: int = 0, damp: float = 0.01, block: int = 128) -> np.ndarray:
    """Rows pruned to `sparsity` (or `prune_n` of every `m` columns) with the OBS update of the survivors."""
    n = prune_n
    if m:
        block = m * max(1, block // m)  # n:m groups never straddle two blocks
    w = rows.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    # Hinv = UᵀU, U upper triangular; both factorizations ridged as far as the Hessian needs
    inverse = ridge_solve(h, np.eye(len(h)), relative=damp)
    upper = robust_cholesky(inverse, relative=1e-9).T
    columns = w.shape[1]
    for start in range(0, columns, block):
        stop = min(start + block, columns)
        w1 = w[:, start:stop].copy()
        u1 = upper[start:stop, start:stop]
        errors = np.zeros_like(w1)
        if not m:
            saliency = w1**2 / np.diag(u1)[None, :] ** 2
            count = int(round(saliency.size * sparsity))
            mask = np.zeros(saliency.shape, dtype=bool)
            if count:
                mask.flat[np.argsort(saliency, axis=None, kind="stable")[:count]] = True
        for i in range(stop - start):
            if m and i % m == 0:
                span = w1[:, i : i + m] ** 2 / np.diag(u1)[i : i + m][None, :] ** 2
                mask_block = np.zeros(span.shape, dtype=bool)
                np.put_along_axis(mask_block, np.argsort(span, axis=1, kind="stable")[:, :n], True, axis=1)
                mask = np.zeros(w1.shape, dtype=bool) if i == 0 else mask
                mask[:, i : i + span.shape[1]] = mask_block
            column = w1[:, i]
            pruned = np.where(mask[:, i], 0.0, column)
            error = (column - pruned) / u1[i, i]
            w1[:, i:] -= np.outer(error, u1[i, i:])
            w1[:, i] = pruned
            errors[:, i] = error
        w[:, start:stop] = w1
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return w
