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

from graphopt import statistics

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
    count = len(next(iter(samples.values()))) if samples else 0
    grams = statistics.collect_grams(
        model, samples, sorted({request.tensor for request in requests}),
        {request: (lambda values, _, request=request: _rows(values[request.tensor], request, max_rows)) for request in requests},
        track=lambda stream: track(stream, desc="prune: statistics", total=count))
    return grams.total


def _rows(value: np.ndarray, request: Request, limit: int) -> np.ndarray:
    """Up to `limit` evenly spaced rows of `value`, with the constant 1 feature appended."""
    if request.kernel is None:
        moved = np.moveaxis(value, request.axis, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        rows = rows[statistics.pick_positions(len(rows), limit)]
    else:
        x = value.reshape((-1,) + value.shape[-3:])
        out_h, out_w = statistics.conv_output_size(x.shape[2], x.shape[3], request.kernel, request.strides, request.pads,
                                                   request.dilations)
        positions = statistics.pick_positions(len(x) * out_h * out_w, limit)
        rows = im2col(x, request.kernel, request.strides, request.pads, request.dilations, positions)
    rows = rows.astype(np.float64)
    return np.concatenate([rows, np.ones((len(rows), 1))], axis=1)


def im2col(x: np.ndarray, kernel, strides, pads, dilations, positions: np.ndarray | None = None) -> np.ndarray:
    """(positions, C·kh·kw) patches of an NCHW tensor, ordered as a Conv weight (O, C, kh, kw) flattens."""
    return statistics.im2col(x, kernel, strides, pads, dilations, positions)
