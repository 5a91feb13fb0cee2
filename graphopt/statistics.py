"""Calibration statistics for data-aware passes: im2col rows, Gram matrices, robust solves.

Factorization whitens by a layer's input Gram `XᵀX`, pruning regresses channels on it; both
stream the activations once (`graphopt.activations`), summing `XᵀX` in float64 a sample at a time.

Real models give Grams that textbook solves break on: a constant LSTM gate or saturated
activation, a padded sequence zero over whole rows, a squeeze-excite branch with one row per
image (rank ≤ samples < K), float32 rounding making a Gram only semi-definite. So every solve is
ridged relative to the Gram's own scale, the ridge grown until the factorization succeeds
(`robust_cholesky`), and a Gram that is not finite or carries no signal is refused with a reason
(`gram_problem`), so the caller leaves that layer alone instead of crashing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from graphopt.activations import iter_activations

__all__ = ["conv_output_size", "pick_positions", "im2col", "Grams", "accumulate_grams", "collect_grams", "gram_problem",
           "ridged", "robust_cholesky", "ridge_solve", "robust_eigh", "split_held_out", "quadratic_form"]

# Relative to the mean diagonal: small enough to leave a well-conditioned solve as it is,
# large enough to make float32 rounding's negative eigenvalues positive.
_RIDGE = 1e-6
_GROWTH = 100.0  # a failed factorization retries with the ridge this much larger
_TRIES = 6  # 1e-6 … 1e4 × the mean diagonal: past that the Gram is noise, not signal


def split_held_out(samples: Mapping[str, np.ndarray] | None, every: int = 4
                   ) -> tuple[Mapping[str, np.ndarray] | None, Mapping[str, np.ndarray] | None]:
    """(samples to fit on, samples to judge the fit on): every `every`-th sample held out, or all
    of them both ways when fewer. A strength picked on the fitted samples is too strong (issue 22:
    cos 0.99 on calibration, 0.970 on held-out inputs)."""
    if not samples:
        return samples, samples
    count = len(next(iter(samples.values())))
    if count < every:
        return samples, samples
    judged = np.arange(count) % every == every - 1
    return ({name: np.asarray(array)[~judged] for name, array in samples.items()},
            {name: np.asarray(array)[judged] for name, array in samples.items()})


def conv_output_size(height: int, width: int, kernel: Sequence[int], strides: Sequence[int] = (1, 1),
                     pads: Sequence[int] = (0, 0, 0, 0), dilations: Sequence[int] = (1, 1)) -> tuple[int, int]:
    """(out_height, out_width) of a 2-D Conv; `pads` is ONNX's (top, left, bottom, right)."""
    kh, kw = kernel
    out_h = (height + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    out_w = (width + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    return out_h, out_w


def pick_positions(total: int, limit: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Up to `limit` of `range(total)`: drawn without replacement with `rng`, else evenly spaced."""
    if total <= limit:
        return np.arange(total)
    if rng is not None:
        return rng.choice(total, size=limit, replace=False)
    return np.linspace(0, total - 1, limit).round().astype(np.int64)


def im2col(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int] = (1, 1), pads: Sequence[int] = (0, 0, 0, 0),
           dilations: Sequence[int] = (1, 1), positions: np.ndarray | None = None) -> np.ndarray:
    """Patches of an NCHW tensor as rows (C·kh·kw wide, ordered as a Conv weight (O, C, kh, kw)
    flattens); only the rows at `positions` of the flattened (batch, out_h, out_w) grid are built."""
    x = x.reshape((-1,) + x.shape[-3:])
    batch, channels, height, width = x.shape
    kh, kw = kernel
    out_h, out_w = conv_output_size(height, width, kernel, strides, pads, dilations)
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    if positions is None:
        positions = np.arange(batch * out_h * out_w)
    b, rest = np.divmod(np.asarray(positions, dtype=np.int64), out_h * out_w)
    y, xs = np.divmod(rest, out_w)
    rows = (y * strides[0])[:, None, None] + (np.arange(kh) * dilations[0])[None, :, None]  # (P, kh, 1)
    cols = (xs * strides[1])[:, None, None] + (np.arange(kw) * dilations[1])[None, None, :]  # (P, 1, kw)
    gathered = padded[b[:, None, None], :, rows, cols]  # (P, kh, kw, C)
    return gathered.transpose(0, 3, 1, 2).reshape(len(b), channels * kh * kw)


@dataclasses.dataclass
class Grams:
    """Per key: the Gram of its rows over all samples, the part from odd-numbered samples
    (the two halves let a fit be judged on samples it was not fitted to), and the row count."""

    total: dict[Hashable, np.ndarray]
    odd: dict[Hashable, np.ndarray]
    rows: dict[Hashable, int]


def accumulate_grams(stream: Iterable[Mapping[str, np.ndarray]],
                     rows_of: Mapping[Hashable, Callable[[Mapping[str, np.ndarray], int], np.ndarray]],
                     on_sample: Callable[[int, Mapping[str, np.ndarray]], None] | None = None) -> Grams:
    """Sums `rows_of[key](values, sample_number)ᵀ·rows` over `stream`'s samples, formed in float32
    and summed in float64; `on_sample(number, values)` sees every sample."""
    total: dict[Hashable, np.ndarray] = {}
    odd: dict[Hashable, np.ndarray] = {}
    counts = {key: 0 for key in rows_of}
    for number, values in enumerate(stream):
        if on_sample is not None:
            on_sample(number, values)
        for key, make in rows_of.items():
            rows = np.asarray(make(values, number), dtype=np.float32)
            product = (rows.T @ rows).astype(np.float64)
            total[key] = total[key] + product if key in total else product
            if number % 2:
                odd[key] = odd[key] + product if key in odd else product
            elif key not in odd:
                odd[key] = np.zeros_like(product)
            counts[key] += len(rows)
    return Grams(total, odd, counts)


def collect_grams(model: onnx.ModelProto, samples: Mapping[str, np.ndarray], tensors: Sequence[str],
                  rows_of: Mapping[Hashable, Callable[[Mapping[str, np.ndarray], int], np.ndarray]],
                  track: Callable[[Iterable], Iterable] = iter,
                  on_sample: Callable[[int, Mapping[str, np.ndarray]], None] | None = None) -> Grams:
    """`accumulate_grams` over one run of `model` on `samples` exposing `tensors`; `track` wraps the
    stream (a progress bar)."""
    stream = iter_activations(model, samples, list(dict.fromkeys(tensors)))
    return accumulate_grams(track(stream), rows_of, on_sample)


def gram_problem(gram: np.ndarray | None, rows: int | None = None) -> str | None:
    """Why a Gram cannot be fitted to (a reason for the report), or None when it can."""
    if gram is None or (rows is not None and rows == 0):
        return "no calibration rows reached the layer"
    if not np.all(np.isfinite(gram)):
        return "its input statistics are not finite (inf or NaN activations)"
    if float(np.trace(gram)) <= 0.0:
        return "its inputs are zero on every calibration sample"
    return None


def ridged(gram: np.ndarray, relative: float = _RIDGE) -> np.ndarray:
    """Symmetrised `gram` + ridge·I in float64, the ridge `relative` × its mean diagonal (× 1 when
    the trace is not positive and finite, so a solve stays defined)."""
    gram = np.asarray(gram, dtype=np.float64)
    gram = (gram + gram.T) / 2
    scale = float(np.trace(gram)) / max(len(gram), 1)
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return gram + relative * scale * np.eye(len(gram))


def robust_cholesky(gram: np.ndarray, relative: float = _RIDGE) -> np.ndarray:
    """Lower Cholesky factor of `ridged(gram)`, the ridge grown ×100 per failure: the least that
    factors it is the least change to the fit. Raises `LinAlgError` only for non-finite entries."""
    return _definite(gram, relative)[1]


def ridge_solve(system: np.ndarray, rhs: np.ndarray, relative: float = _RIDGE) -> np.ndarray:
    """x with `(system + ridge·I)·x = rhs` for a Gram-like `system`, the ridge `robust_cholesky`'s:
    a singular system is solved, never raised on; least squares for non-finite ones."""
    system = np.asarray(system, dtype=np.float64)
    rhs = np.asarray(rhs, dtype=np.float64)
    if not (np.all(np.isfinite(system)) and np.all(np.isfinite(rhs))):
        return np.linalg.lstsq(np.nan_to_num(system), np.nan_to_num(rhs), rcond=None)[0]
    return np.linalg.solve(_definite(system, relative)[0], rhs)


def robust_eigh(symmetric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and vectors of a symmetric matrix; SVD when LAPACK's eigh does not converge."""
    symmetric = np.asarray(symmetric, dtype=np.float64)
    symmetric = (symmetric + symmetric.T) / 2
    try:
        return np.linalg.eigh(symmetric)
    except np.linalg.LinAlgError:
        left, singular, right = np.linalg.svd(symmetric)
        signs = np.sign(np.einsum("ij,ij->j", left, right.T))
        values = singular * np.where(signs == 0, 1.0, signs)
        order = np.argsort(values)
        return values[order], left[:, order]


def _definite(gram: np.ndarray, relative: float) -> tuple[np.ndarray, np.ndarray]:
    """(the least-ridged version of `gram` that Cholesky factors, its lower factor)."""
    gram = np.asarray(gram, dtype=np.float64)
    if not np.all(np.isfinite(gram)):
        raise np.linalg.LinAlgError("Gram matrix has non-finite entries")
    for attempt in range(_TRIES):
        matrix = ridged(gram, relative * _GROWTH**attempt)
        try:
            return matrix, np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            continue
    # past every ridge: clip the spectrum, which always factors
    values, vectors = robust_eigh(ridged(gram, relative))
    floor = max(float(np.abs(values).max(initial=0.0)), 1.0) * 1e-6
    matrix = (vectors * np.maximum(values, floor)) @ vectors.T
    matrix = (matrix + matrix.T) / 2 + floor * np.eye(len(gram))
    return matrix, np.linalg.cholesky(matrix)


def quadratic_form(left: np.ndarray, matrix: np.ndarray, right: np.ndarray) -> float:
    """Σ_ij (left·matrix)_ij · right_ij (the summed quadratic forms of the rows), through BLAS:
    np.einsum("ij,jk,ik->") runs an unoptimised loop, a quarter of a channel-pruning run."""
    return float(np.sum((np.asarray(left) @ matrix) * right))
