"""SmoothQuant-style migration: outlier channels of a LayerNorm's output moved into the weights.

Trained transformers carry a few feature channels ×10-×30 larger than the rest after LayerNorm;
one scale per tensor for the activation then leaves the ordinary channels a handful of levels.
For the MatMuls that read such a tensor X with a constant weight W, `X W = (X / s) (s W)` for
any per-channel s > 0. With s_k = max|X_k|^α / max|W_k|^(1-α) (α = `smooth`, 0.5 by default)
the activation's channels are evened out and the weight's rows take the difference: weights are
quantized per output channel, so a row scaled up costs little.

The division is folded into the LayerNorm's γ and β when the MatMuls are its only readers
(exact, free); otherwise (post-norm transformers: the residual Add reads it too) one float `Mul`
by 1/s is put in front of the MatMuls only, shared by all of them (q, k, v).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt.activations import iter_activations

__all__ = ["smoothing_sites", "channel_extremes", "smooth"]

_NORMS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}  # op -> (γ input, β input)
_FLOOR = 1e-5


def _weight_readers(tensor: gs.Tensor) -> list[gs.Node]:
    return [n for n in tensor.outputs if n.op == "MatMul" and n.inputs[0] is tensor and graph_queries.constant_value(n.inputs[1]) is not None
            and graph_queries.constant_value(n.inputs[1]).ndim == 2]


def smoothing_sites(graph: gs.Graph, quantized: set[str]) -> list[str]:
    """Names of LayerNorm outputs (last axis) read by at least one quantized MatMul (node names in `quantized`)."""
    sites = []
    for node in graph.nodes:
        if node.op not in _NORMS or int(node.attrs.get("axis", -1)) != -1 or not node.outputs:
            continue
        if any(m.name in quantized for m in _weight_readers(node.outputs[0])):
            sites.append(node.outputs[0].name)
    return sites


def channel_extremes(model: onnx.ModelProto, samples: Mapping[str, np.ndarray], names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor, the (min, max) of each channel of the last axis over all samples."""
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for values in iter_activations(model, samples, names):
        for name in names:
            flat = np.asarray(values[name], np.float32).reshape(-1, np.shape(values[name])[-1])
            low, high = flat.min(axis=0), flat.max(axis=0)
            if name in found:
                low, high = np.minimum(found[name][0], low), np.maximum(found[name][1], high)
            found[name] = (low, high)
    return found


def smooth(graph: gs.Graph, sites: list[str], extremes: dict, alpha: float, quantized: set[str]) -> dict[str, tuple[float, float]]:
    """Applies the migration at `sites`; returns the new (min, max) of each smoothed tensor."""
    tensors = graph.tensors()
    ranges = {}
    for name in sites:
        x = tensors[name]
        readers = [m for m in _weight_readers(x) if m.name in quantized]
        if not readers or name not in extremes:
            continue
        low, high = extremes[name]
        act = np.maximum(np.maximum(np.abs(low), np.abs(high)), _FLOOR)
        weights = [graph_queries.constant_value(m.inputs[1]) for m in readers]
        wmax = np.maximum(np.max([np.max(np.abs(w), axis=1) for w in weights], axis=0), _FLOOR)
        scale = np.clip(act ** alpha / wmax ** (1.0 - alpha), _FLOOR, None).astype(np.float32)
        for node, weight in zip(readers, weights):
            node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_smoothed_{node.name}", (weight * scale[:, None]).astype(np.float32))
        norm = x.inputs[0] if x.inputs else None
        if norm is not None and norm.op in _NORMS and len(x.outputs) == len(readers) and not _is_graph_output(graph, x):
            for index in _NORMS[norm.op]:
                if index < len(norm.inputs) and graph_queries.constant_value(norm.inputs[index]) is not None:
                    value = graph_queries.constant_value(norm.inputs[index])
                    norm.inputs[index] = gs.Constant(f"{norm.inputs[index].name}_smoothed", (value / scale).astype(np.float32))
            target = x
        else:
            target = gs.Variable(f"{name}_smoothed", dtype=np.float32, shape=x.shape)
            graph.nodes.append(gs.Node("Mul", f"{name}_smooth", inputs=[x, gs.Constant(f"{name}_inverse_scale", (1.0 / scale).astype(np.float32))],
                                       outputs=[target]))
            for node in readers:
                node.inputs[0] = target
        ranges[target.name] = (float(np.min(low / scale)), float(np.max(high / scale)))
    return ranges


def _is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)
