"""What the data-aware fit needs from the calibration data: each site's input Gram matrix.

The model runs once in onnxruntime, one sample at a time (`graphopt.statistics.collect_grams`),
and each site's Gram `XᵀX` is accumulated as the samples stream by, so memory holds one sample's
activations, never the whole set. A Conv's rows are its im2col patches, at most
`rows_per_sample` positions per sample drawn with the run's seeded generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
import onnx

from graphopt.statistics import collect_grams, im2col, pick_positions
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
    positions = pick_positions(batch * out_h * out_w, limit, rng)
    return im2col(x, (kh, kw), site.node.attrs.get("strides", [1, 1]), conv_pads(site.node, x.shape[2], x.shape[3]),
                  site.node.attrs.get("dilations", [1, 1]), positions)


def _rows(site: Site, value: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if site.kind in ("matmul", "gemm"):
        rows = value.reshape(-1, value.shape[-1])
        return rows[pick_positions(len(rows), limit, rng)] if len(rows) > limit else rows
    return patches(site, value, limit, rng)


def collect(model: onnx.ModelProto, samples: dict[str, np.ndarray], sites: list[Site],
            rows_per_sample: int, rng: np.random.Generator,
            track: Callable[[Iterable], Iterable] = iter) -> LayerData:
    """Runs `model` over `samples` once and accumulates every data-aware site's input Gram.

    `track` wraps the per-sample stream (the pass's progress bar)."""
    wanted = [site for site in sites if site.kind != "conv_spatial"]
    inputs = list(dict.fromkeys(site.input.name for site in sites))
    outputs = [value.name for value in model.graph.output]
    shapes: dict[int, tuple[int, ...]] = {}
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}

    def keep(_, values) -> None:
        for site in sites:
            shapes.setdefault(site.index, tuple(values[site.input.name].shape))
        for name in outputs:
            collected[name].append(values[name])

    def rows_of(site: Site):
        return lambda values, _: _rows(site, np.asarray(values[site.input.name], dtype=np.float32), rows_per_sample, rng)

    grams = collect_grams(model, samples, inputs + outputs, {site.index: rows_of(site) for site in wanted}, track, keep)
    stacked = {name: np.stack(arrays) for name, arrays in collected.items()}
    width = {site.index: site.weight.shape[0] for site in wanted}
    empty = {index: np.zeros((size, size)) for index, size in width.items()}
    return LayerData({**empty, **grams.total}, {index: grams.rows.get(index, 0) for index in width}, stacked, shapes,
                     {**empty, **grams.odd})
