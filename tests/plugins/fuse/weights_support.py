"""Constant weights for the parser text of fuse tests: `weights(w=array, …)` → `<float[…] w = {…}, …>`."""

from __future__ import annotations

import numpy as np
import onnx

__all__ = ["weights", "rand"]


def weights(**arrays: np.ndarray) -> str:
    """The initializer block that follows a graph's signature in `onnx.parser` text."""
    parts = []
    for name, array in arrays.items():
        array = np.asarray(array)
        elem = onnx.helper.tensor_dtype_to_string(onnx.helper.np_dtype_to_tensor_dtype(array.dtype)).split(".")[-1].lower()
        dims = f"[{','.join(str(d) for d in array.shape)}]" if array.ndim else ""
        values = ", ".join(repr(v.item()) for v in array.reshape(-1))
        parts.append(f"{elem}{dims} {name} = {{{values}}}")
    return "<" + ", ".join(parts) + ">"


def rand(*shape: int, low: float = -1.0, high: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)
