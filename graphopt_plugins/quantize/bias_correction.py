"""Bias correction: the mean output error per channel of each quantized layer moved into its bias.

Weight rounding errs the same way on every input: with inputs of non-zero mean (after a ReLU or
SiLU they are mostly positive) `(W_q - W) x` has a systematic part per output channel, which
shifts every later layer. Measured on the calibration data, one shot over all layers: the mean
of `y_quantized - y_float` per channel (over samples and positions) is subtracted from the bias
before it is quantized to int32. Layers without a per-channel bias are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from graphopt.activations import iter_activations
from graphopt_plugins.quantize.targets import Target

__all__ = ["bias_shifts"]


def _channel_axis(target: Target) -> int:
    return 1 if target.op in ("Conv", "ConvTranspose") else -1


def bias_shifts(float_model: onnx.ModelProto, quantized: onnx.ModelProto, samples: Mapping[str, np.ndarray],
                targets: list[Target], outputs: dict[int, str]) -> dict[int, np.ndarray]:
    """Per target index: the mean error of its output per channel (`outputs[index]` is the tensor to read)."""
    names = list(dict.fromkeys(outputs[t.index] for t in targets))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    by_axis = {outputs[t.index]: _channel_axis(t) for t in targets}
    for expected, actual in zip(iter_activations(float_model, samples, names), iter_activations(quantized, samples, names)):
        for name in names:
            error = np.moveaxis(np.asarray(actual[name], np.float64) - np.asarray(expected[name], np.float64), by_axis[name], -1)
            flat = error.reshape(-1, error.shape[-1])
            sums[name] = sums.get(name, 0.0) + flat.sum(axis=0)
            counts[name] = counts.get(name, 0) + flat.shape[0]
    return {t.index: (sums[outputs[t.index]] / max(counts[outputs[t.index]], 1)).astype(np.float32)
            for t in targets if outputs[t.index] in sums}
