"""What the data-aware fit needs from the calibration data: each site's input Gram matrix.

The model runs once in onnxruntime, one sample at a time (`graphopt.activations`), and each
site's Gram `XᵀX` is accumulated as the samples stream by, so memory holds one sample's
activations, never the whole set. A Conv's rows are its im2col patches, at most
`rows_per_sample` positions per sample drawn with the run's seeded generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
import onnx

from graphopt.activations import iter_activations
from graphopt_plugins.factorize.sites import Site, conv_pads

__all__ = ["LayerData", "collect", "conv_geometry", "patches"]


@dataclasses.dataclass
class LayerData:
    """Per site: the Gram of its inputs (K×K) and how many rows went in.

    `odd_grams` holds the part of each Gram from the odd-numbered samples: the two halves let a
    fit be judged on samples it was not fitted to (lowrank.held_out_errors)."""

    grams: dict[int, np.ndarray]
    rows_seen: dict[int, int]
    outputs: dict[str, np.ndarray]  # the model's outputs on the samples, stacked, for the budget check
    input_shapes: dict[int, tuple[int, ...]]  # one sample's input shape per site
    odd_grams: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


def conv_geometry(site: Site, shape) -> tuple[int, int, int, int]:
    """(batch, out_height, out_width, in_width) of a 2-D Conv on an input of `shape` (B, C, H, W)."""
    batch, _, height, width = shape
    _, _, kh, kw = site.node.inputs[1].shape
    top, left, bottom, right = conv_pads(site.node, height, width)
    sh, sw = site.node.attrs.get("strides", [1, 1])
    dh, dw = site.node.attrs.get("dilations", [1, 1])
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    return batch, out_h, out_w, width


def patches(site: Site, x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `limit` im2col rows (C·kh·kw wide, ordered as the weight is) of a Conv input (B, C, H, W)."""
    batch, out_h, out_w, _ = conv_geometry(site, x.shape)
    _, _, kh, kw = site.node.inputs[1].shape
    top, left, bottom, right = conv_pads(site.node, x.shape[2], x.shape[3])
    sh, sw = site.node.attrs.get("strides", [1, 1])
    dh, dw = site.node.attrs.get("dilations", [1, 1])
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    total = batch * out_h * out_w
    chosen = rng.choice(total, size=limit, replace=False) if total > limit else np.arange(total)
    b, rest = np.divmod(chosen, out_h * out_w)
    y, xs = np.divmod(rest, out_w)
    rows = (y * sh)[:, None, None] + (np.arange(kh) * dh)[None, :, None]  # (P, kh, 1)
    cols = (xs * sw)[:, None, None] + (np.arange(kw) * dw)[None, None, :]  # (P, 1, kw)
    gathered = padded[b[:, None, None], :, rows, cols]  # (P, kh, kw, C)
    return gathered.transpose(0, 3, 1, 2).reshape(len(chosen), -1)


def _rows(site: Site, value: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if site.kind in ("matmul", "gemm"):
        rows = value.reshape(-1, value.shape[-1])
        if len(rows) > limit:
            rows = rows[rng.choice(len(rows), size=limit, replace=False)]
        return rows
    return patches(site, value, limit, rng)


def collect(model: onnx.ModelProto, samples: dict[str, np.ndarray], sites: list[Site],
            rows_per_sample: int, rng: np.random.Generator,
            track: Callable[[Iterable], Iterable] = iter) -> LayerData:
    """Runs `model` over `samples` once and accumulates every data-aware site's input Gram.

    `track` wraps the per-sample stream (the pass's progress bar)."""
    wanted = [site for site in sites if site.kind != "conv_spatial"]
    inputs = list(dict.fromkeys(site.input.name for site in sites))
    outputs = [value.name for value in model.graph.output]
    grams = {site.index: np.zeros((site.weight.shape[0],) * 2) for site in wanted}
    rows_seen = {site.index: 0 for site in wanted}
    shapes: dict[int, tuple[int, ...]] = {}
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    odd_grams = {site.index: np.zeros((site.weight.shape[0],) * 2) for site in wanted}
    for number, values in enumerate(track(iter_activations(model, samples, list(dict.fromkeys(inputs + outputs))))):
        for site in sites:
            shapes.setdefault(site.index, tuple(values[site.input.name].shape))
        for site in wanted:
            rows = _rows(site, np.asarray(values[site.input.name], dtype=np.float32), rows_per_sample, rng)
            product = (rows.T @ rows).astype(np.float64)  # float32 products, float64 sum
            grams[site.index] += product
            if number % 2:
                odd_grams[site.index] += product
            rows_seen[site.index] += len(rows)
        for name in outputs:
            collected[name].append(values[name])
    stacked = {name: np.stack(arrays) for name, arrays in collected.items()}
    return LayerData(grams, rows_seen, stacked, shapes, odd_grams)
