"""The arithmetic of quantization: weight scales per channel or per block, activation params.

Weights are symmetric (zero point 0): int8 in [-127, 127] (the symmetric range, so that
negating a weight never overflows) or int4 in [-7, 7] per block along the reduction axis.
Activations are per tensor: uint8 asymmetric (zero point chosen so that 0.0 is exact) or int8
symmetric. A bias becomes int32 with scale x_scale * w_scale, per output channel.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["quantize_per_channel", "weight_sqnr_db", "quantize_blocked", "activation_params", "quantize_bias", "fake_quantize"]

_TINY = np.float32(1e-12)


def quantize_per_channel(weight: np.ndarray, axis: int, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale of shape (C,)) with one symmetric scale per slice along `axis`."""
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    amax = np.max(np.abs(weight), axis=reduce) if reduce else np.abs(weight)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    quantized = np.clip(np.rint(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return quantized, scale


def weight_sqnr_db(weight: np.ndarray, axis: int, qmax: int = 127) -> float:
    """The SQNR (dB) of `weight` quantized per channel along `axis`: inf when it is exact."""
    weight = weight.astype(np.float32)
    quantized, scale = quantize_per_channel(weight, axis, qmax)
    shape = [1] * weight.ndim
    shape[axis] = -1
    noise = float(np.sum((weight - quantized * scale.reshape(shape)) ** 2))
    return 10 * math.log10(float(np.sum(weight ** 2)) / noise) if noise > 0 else math.inf


def quantize_blocked(weight: np.ndarray, axis: int, block: int, qmax: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(int weight in [-qmax, qmax] as int8, scale) with one scale per `block` elements along `axis`.

    The scale has the weight's rank with dimension ceil(D / block) on `axis` (opset-21 blocked
    DequantizeLinear); a trailing partial block gets its own scale.
    """
    length = weight.shape[axis]
    blocks = -(-length // block)
    padded = np.moveaxis(weight, axis, 0)
    pad = blocks * block - length
    if pad:
        padded = np.concatenate([padded, np.zeros((pad, *padded.shape[1:]), weight.dtype)])
    grouped = padded.reshape(blocks, block, *padded.shape[1:])
    amax = np.max(np.abs(grouped), axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(grouped / scale[:, None]), -qmax, qmax).reshape(blocks * block, *padded.shape[1:])
    quantized = np.moveaxis(quantized[:length], 0, axis).astype(np.int8)
    return quantized, np.moveaxis(scale, 0, axis).astype(np.float32)


def activation_params(low: float, high: float, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) for a tensor in [low, high]; the range always includes 0."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if signed:
        amax = max(abs(low), abs(high))
        scale = np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)
        return np.array(max(scale, _TINY), np.float32), np.array(0, np.int8)
    scale = np.float32((high - low) / 255.0) if high > low else np.float32(1.0)
    scale = max(scale, _TINY)
    zero = int(np.clip(np.rint(-low / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


def quantize_bias(bias: np.ndarray, x_scale: np.ndarray, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 bias, its float32 scale x_scale * w_scale per channel)."""
    scale = (np.float32(x_scale) * w_scale).astype(np.float32)
    scale = np.where(scale > 0, scale, _TINY).astype(np.float32)
    limit = np.iinfo(np.int32).max
    quantized = np.clip(np.rint(bias.astype(np.float64) / scale), -limit, limit).astype(np.int32)
    return quantized, scale


def fake_quantize(values: np.ndarray, low: float, high: float, signed: bool) -> np.ndarray:
    """`values` through Q then DQ with the parameters `activation_params(low, high)` gives."""
    scale, zero = activation_params(low, high, signed)
    qmin, qmax = (-128, 127) if signed else (0, 255)
    q = np.clip(np.rint(values / scale) + zero.astype(np.int32), qmin, qmax)
    return ((q - zero.astype(np.int32)) * scale).astype(np.float32)
