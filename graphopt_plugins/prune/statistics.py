"""Second moments of layer inputs on calibration data: what importance and reconstruction use.

For each requested tensor the Gram matrix `[X, 1]^T [X, 1]` is accumulated over samples, where a
row of `X` is one position's features: the channels along an axis (structured pruning regresses
one channel on the others position by position), or a Conv's im2col patch (unstructured
reconstruction needs the Hessian of the layer's own reduction). Rows are evenly subsampled to
`max_rows` per sample, so memory and time stay bounded on big feature maps.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx

from graphopt.activations import iter_activations

__all__ = ["Request", "collect_grams", "calibration_samples"]


@dataclasses.dataclass(frozen=True)
class Request:
    """Rows of `tensor`: features along `axis`, or, with `kernel`, a Conv's patches."""

    tensor: str
    axis: int = -1
    kernel: tuple[int, ...] | None = None
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)


def calibration_samples(ctx, limit: int, logger: logging.Logger) -> dict[str, np.ndarray] | None:
    """`--calibration` data, else the verifier's inputs (with a warning), at most `limit` samples."""
    samples, origin = ctx.fitting_data(limit)
    if origin == "sample_inputs":
        logger.warning("prune: no --calibration given; importance, reconstruction and the budget check use the verifier's "
                       "inputs, which are generated unless --inputs was given, so they may mean little")
    return samples


def collect_grams(model: onnx.ModelProto, samples: dict, requests: list[Request], max_rows: int,
                  track=lambda items, desc, total: items) -> dict[Request, np.ndarray]:
    """`{request: Gram (F+1, F+1)}` in float64, the last row/column being the constant 1 feature.

    `track` is `PassContext.track` (a progress bar over the samples) or the default no-op.
    """
    names = sorted({request.tensor for request in requests})
    grams: dict[Request, np.ndarray] = {}
    count = len(next(iter(samples.values()))) if samples else 0
    for values in track(iter_activations(model, samples, names), desc="prune: statistics", total=count):
        for request in requests:
            rows = _rows(values[request.tensor], request)
            rows = rows[_evenly(len(rows), max_rows)].astype(np.float64)
            rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
            gram = rows.T @ rows
            grams[request] = grams[request] + gram if request in grams else gram
    return grams


def _evenly(count: int, limit: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(np.int64)


def _rows(value: np.ndarray, request: Request) -> np.ndarray:
    if request.kernel is None:
        moved = np.moveaxis(value, request.axis, -1)
        return moved.reshape(-1, moved.shape[-1])
    return im2col(value, request.kernel, request.strides, request.pads, request.dilations)


def im2col(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """(positions, C·kh·kw) patches of an NCHW tensor, ordered as a Conv weight (O, C, kh, kw) flattens."""
    x = x.reshape((-1,) + x.shape[-3:])
    kh, kw = kernel
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = ((kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
    windows = windows[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    batch, channels, out_h, out_w = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(batch * out_h * out_w, channels * kh * kw)
