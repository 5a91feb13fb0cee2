"""Weight rounding fitted to the layer's output (AdaRound-style), and per-tensor weight scales.

Rounding each weight to the nearest level minimises the error of the weights, not of the layer's
output: with inputs X whose channels are correlated, the per-weight errors of a row add up
coherently in `W X`. `adaptive` rounding picks, per weight, the level below or above `W / s` to
minimise `||(W - s Q) X||^2` on calibration activations. Per output row that is the quadratic
`e^T H e` in the weight error e, with H = X X^T summed over sampled input positions; greedy
coordinate descent from nearest rounding flips one weight at a time when that lowers it
(exact update of `e H` per flip), all rows of a layer at once, a few sweeps. It never ends
above nearest rounding on the calibration data. Bounded: at most `_ROWS` input positions per
sample, `_SWEEPS` sweeps, and layers whose H would be too large (`_MAX_ENTRIES`) keep nearest.

Handles Conv (2-D kernels, explicit pads, any group: one H per group), Gemm, and MatMul with a
2-D weight; activations are the float model's (a deployed int8 input adds its own noise, which
the fit ignores). Weights are symmetric int8 in [-qmax, qmax], as `numerics.quantize_per_channel`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from graphopt.activations import iter_activations
from graphopt_plugins.quantize.latency import constant_tensors
from graphopt_plugins.quantize.numerics import quantize_per_channel
from graphopt_plugins.quantize.targets import Target

__all__ = ["fitted_weights", "rounding_fit"]

logger = logging.getLogger(__name__)
_ROWS = 512  # input positions sampled per calibration sample and layer
_SWEEPS = 4
_MAX_ENTRIES = 8_000_000  # groups x K x K of one layer's H (64 MB in float64)
_RIDGE = 1e-4  # H + ridge * mean(diag H): a fit on few positions must not chase noise


def _weight(constants: Mapping, model: onnx.ModelProto, target: Target) -> tuple[str, np.ndarray] | None:
    name = model.graph.node[target.index].input[1]
    tensor = constants.get(name)
    return None if tensor is None else (name, onnx.numpy_helper.to_array(tensor).astype(np.float32))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _layout(node: onnx.NodeProto, weight: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(groups, the weight as (groups, rows per group, K)): one row per output channel."""
    attrs = _attrs(node)
    if node.op_type == "Conv":
        if weight.ndim != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        groups = int(attrs.get("group", 1))
        return groups, weight.reshape(groups, weight.shape[0] // groups, -1)
    if weight.ndim != 2 or node.op_type not in ("Gemm", "MatMul"):
        return None
    rows = weight if node.op_type == "Gemm" and int(attrs.get("transB", 0)) else weight.T
    return 1, rows[None]


def _patches(node: onnx.NodeProto, x: np.ndarray, groups: int, kernel: tuple[int, int], rng) -> np.ndarray:
    """(groups, positions, K): sampled inputs of the layer, in the weight's (C_in/g, kh, kw) order."""
    if node.op_type != "Conv":
        flat = x.reshape(-1, x.shape[-1])
        return flat[rng.choice(len(flat), min(len(flat), _ROWS), replace=False)][None]
    attrs = _attrs(node)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    windows = sliding_window_view(padded, span, axis=(2, 3))[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    batch, _, height, width = windows.shape[:4]
    chosen = rng.choice(batch * height * width, min(batch * height * width, _ROWS), replace=False)
    b, rest = np.divmod(chosen, height * width)
    h, w = np.divmod(rest, width)
    picked = windows[b, :, h, w]  # (positions, C_in, kh, kw)
    return picked.reshape(len(chosen), groups, -1).transpose(1, 0, 2)


def _scales(rows: np.ndarray, qmax: int, per_tensor: bool) -> np.ndarray:
    amax = np.max(np.abs(rows), axis=2)
    if per_tensor:
        amax = np.full_like(amax, np.max(amax))
    return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)


def rounding_fit(rows: np.ndarray, scale: np.ndarray, hessian: np.ndarray, qmax: int, sweeps: int = _SWEEPS) -> np.ndarray:
    """Integer levels for `rows` (G, R, K) with `scale` (G, R) minimising sum of e^T H_g e, e = rows - scale * levels."""
    real = rows.astype(np.float64) / scale[..., None]
    low = np.floor(real)
    levels = np.clip(np.rint(real), -qmax, qmax)
    step = scale.astype(np.float64)
    hessian = hessian + _RIDGE * np.mean(np.diagonal(hessian, axis1=1, axis2=2), axis=1)[:, None, None] * np.eye(hessian.shape[1])
    gradient = np.einsum("grk,gkj->grj", (real - levels) * step[..., None], hessian)  # e H per row
    diagonal = np.diagonal(hessian, axis1=1, axis2=2)  # (G, K)
    for _ in range(sweeps):
        flips = 0
        for k in range(rows.shape[2]):
            current = levels[..., k]
            other = np.where(current == low[..., k], low[..., k] + 1, low[..., k])
            delta = (current - other) * step  # the change of e_k if flipped
            gain = 2 * delta * gradient[..., k] + delta ** 2 * diagonal[:, k:k + 1]
            accept = (gain < -1e-12 * np.abs(gradient[..., k] * delta + 1e-30)) & (np.abs(other) <= qmax)
            if not accept.any():
                continue
            delta = np.where(accept, delta, 0.0)
            levels[..., k] = np.where(accept, other, current)
            gradient += delta[..., None] * hessian[:, None, k, :]
            flips += int(accept.sum())
        if not flips:
            break
    return levels


def fitted_weights(model: onnx.ModelProto, targets: list[Target], samples: Mapping[str, np.ndarray], qmax: int,
                   per_tensor: bool, adaptive: bool, seed: int = 0) -> tuple[dict[int, tuple[str, np.ndarray, np.ndarray]], dict]:
    """Per target index: (weight name, int8 weight in its own layout, scale per output channel)."""
    found, layouts, constants = {}, {}, constant_tensors(model)
    for target in targets:
        weight = _weight(constants, model, target)
        layout = _layout(model.graph.node[target.index], weight[1]) if weight else None
        if layout is None:
            if weight and per_tensor:
                quantized, scale = quantize_per_channel(weight[1], target.axis, qmax)
                scale = np.full_like(scale, np.max(scale))
                shape = [1] * weight[1].ndim
                shape[target.axis] = -1
                found[target.index] = (weight[0], np.clip(np.rint(weight[1] / scale.reshape(shape)), -qmax, qmax).astype(np.int8), scale)
            continue
        layouts[target.index] = (weight, *layout)
    started, fitted = time.perf_counter(), 0
    hessians = _hessians(model, targets, samples, layouts, seed) if adaptive else {}
    for index, ((name, weight), groups, rows) in layouts.items():
        scale = _scales(rows, qmax, per_tensor)
        if index in hessians:
            levels = rounding_fit(rows, scale, hessians[index], qmax)
            fitted += 1
        else:
            levels = np.clip(np.rint(rows / scale[..., None]), -qmax, qmax)
        node = model.graph.node[index]
        levels, flat_scale = levels.reshape(-1, rows.shape[2]), scale.reshape(-1)
        if node.op_type == "Conv":
            quantized = levels.reshape(weight.shape)
        else:
            quantized = levels if node.op_type == "Gemm" and int(_attrs(node).get("transB", 0)) else levels.T
        found[index] = (name, quantized.astype(np.int8), flat_scale)
    stats = {"adaptive_rounded": fitted, "rounding_seconds": round(time.perf_counter() - started, 2)} if adaptive else {}
    if per_tensor:
        stats["per_tensor_weights"] = len(found)
    return found, stats


def _hessians(model, targets, samples, layouts, seed) -> dict[int, np.ndarray]:
    """Per target: H = sum of x x^T over sampled input positions, one (K, K) per group."""
    rng = np.random.default_rng(seed)
    wanted = {t.index: t for t in targets if t.index in layouts
              and layouts[t.index][1] * layouts[t.index][2].shape[2] ** 2 <= _MAX_ENTRIES}
    for index in set(layouts) - set(wanted):
        logger.debug("quantize: %s keeps nearest rounding (its H is too large)", model.graph.node[index].name)
    sums: dict[int, np.ndarray] = {}
    names = list(dict.fromkeys(t.activation for t in wanted.values()))
    for values in iter_activations(model, samples, names):
        for index, target in wanted.items():
            (_, weight), groups, _ = layouts[index]
            node = model.graph.node[index]
            x = np.asarray(values[target.activation], np.float64)
            patches = _patches(node, x, groups, weight.shape[2:] if node.op_type == "Conv" else (), rng)
            sums[index] = sums.get(index, 0.0) + np.einsum("gpk,gpj->gkj", patches, patches)
    return sums
