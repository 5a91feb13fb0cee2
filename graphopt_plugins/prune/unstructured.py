"""Unstructured pruning: zero the least important weights of Conv/Gemm/MatMul layers.

A layer's weight is seen as rows (output units) × columns (its reduction: input features, or a
Conv's C·kh·kw patch). Without data the least-magnitude weights go; with calibration data and
`reconstruct`, SparseGPT picks them by OBS saliency and updates the survivors to keep the
layer's output. `pattern=n:m` keeps at most n nonzeros in every m consecutive columns.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.prune import reconstruct
from graphopt_plugins.prune.allocation import allocate, loss_curve
from graphopt_plugins.prune.statistics import Request, collect_grams

__all__ = ["Layer", "find_layers", "prune_weights"]

_MARK = ".sparse"  # suffix of weights this pass wrote: such layers are left alone (idempotence)
_MAX_COLUMNS = 4096  # a reduction wider than this gets no Hessian (F² memory): magnitude only


@dataclasses.dataclass
class Layer:
    node: gs.Node
    request: Request | None  # how to collect the input Hessian, None when it cannot be

    @property
    def weight(self) -> np.ndarray:
        return graph_queries.constant_value(self.node.inputs[1])

    def rows(self) -> np.ndarray:
        weight = self.weight
        if self.node.op == "Conv":
            return weight.reshape(weight.shape[0], -1)
        return weight if self.node.attrs.get("transB", 0) else weight.T

    def restore(self, rows: np.ndarray) -> np.ndarray:
        weight = self.weight
        if self.node.op == "Conv":
            return rows.reshape(weight.shape).astype(weight.dtype)
        return (rows if self.node.attrs.get("transB", 0) else rows.T).astype(weight.dtype)


def find_layers(graph: gs.Graph, min_weights: int) -> list[Layer]:
    layers = []
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or node.attrs.get("transA", 0):
            continue
        weight = graph_queries.constant_value(node.inputs[1])
        if weight is None or weight.dtype.kind != "f" or weight.size < min_weights or graph_queries.constant_value(node.inputs[0]) is not None:
            continue
        if node.inputs[1].name.rstrip("_").endswith(_MARK):
            continue  # pruned by an earlier run, perhaps backed off below today's target
        if node.op != "Conv" and weight.ndim != 2:
            continue
        layers.append(Layer(node, _request(node, weight)))
    return layers


def _request(node: gs.Node, weight: np.ndarray) -> Request | None:
    columns = weight[0].size if node.op == "Conv" else weight.shape[1 if node.attrs.get("transB", 0) else 0]
    if columns > _MAX_COLUMNS:
        return None
    if node.op != "Conv":
        return Request(node.inputs[0].name, axis=-1)
    if weight.ndim != 4 or node.attrs.get("group", 1) != 1 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return None
    return Request(node.inputs[0].name, kernel=tuple(weight.shape[2:]), strides=tuple(node.attrs.get("strides", (1, 1))),
                   pads=tuple(node.attrs.get("pads", (0, 0, 0, 0))), dilations=tuple(node.attrs.get("dilations", (1, 1))))


def prune_weights(graph: gs.Graph, layers: list[Layer], options, model: onnx.ModelProto | None, samples) -> list[dict]:
    """Prunes every layer not yet at its target; returns one report row per layer changed."""
    n, m = options.pattern_nm
    grams = {}
    if samples is not None and model is not None and (options.reconstruct_enabled or options.allocation == "sensitivity"):
        requests = {layer.request for layer in layers if layer.request is not None}
        grams = collect_grams(model, samples, sorted(requests, key=repr), options.max_rows, track=options.track)
    # A Hessian from fewer rows than twice its size (an SE block's pooled input, few samples) is
    # near singular: the OBS update would fit noise, so such a layer is pruned by magnitude.
    hessians = [grams[layer.request][:-1, :-1] if layer.request in grams and grams[layer.request][-1, -1] >= 2 * len(grams[layer.request]) else None for layer in layers]
    targets = _targets(layers, hessians, options) if not m else _pattern_targets(layers, n, m, options.pattern_share)
    taken = set(graph.tensors().keys())
    table = []
    for layer, hessian, target in options.track(list(zip(layers, hessians, targets)), desc="prune: layers", total=len(layers)):
        rows = layer.rows().astype(np.float64)
        if target == 0 or _done(rows, target, n, m):
            continue
        plain = magnitude_mask(rows, target, n, m)
        row = {"layer": layer.node.name, "weights": int(rows.size), "sparsity": round(float((plain == 0).mean()), 4)}
        pruned = plain
        if hessian is not None:
            row["error"] = reconstruct.output_error(rows, plain, hessian)
            if options.reconstruct_enabled:
                pruned = reconstruct.sparsegpt(rows, hessian, target, prune_n=m - n if m else 0, m=m, damp=options.damp)
                row["error_reconstructed"] = reconstruct.output_error(rows, pruned, hessian)
        before = layer.weight
        after = layer.restore(pruned)
        row["zip_bytes_before"] = len(zlib.compress(before.tobytes(), 6))
        row["zip_bytes_after"] = len(zlib.compress(after.tobytes(), 6))
        row["dense_bytes"] = int(after.nbytes)
        name = layer.node.inputs[1].name + _MARK
        while name in taken:
            name += "_"
        taken.add(name)
        row["stored_bytes"] = _store(graph, layer.node, name, np.ascontiguousarray(after), options.storage)
        table.append(row)
    return table


def _store(graph: gs.Graph, node: gs.Node, name: str, weight: np.ndarray, storage: str) -> int:
    """Makes `weight` the node's weight, dense or (when smaller) sparse; returns the bytes stored.

    Sparse is a Constant node with a COO `sparse_value` (values, and int64 linear indices as
    ONNX requires): 12 bytes per nonzero float32, so it only pays above 2/3 sparsity.
    onnxruntime densifies it at load, so it saves file size, not memory or time.
    """
    nonzero = np.flatnonzero(weight)
    sparse_bytes = int(nonzero.size * (weight.itemsize + 8))
    if storage != "sparse" or sparse_bytes >= weight.nbytes:
        node.inputs[1] = gs.Constant(name, weight)
        return int(weight.nbytes)
    values = onnx.numpy_helper.from_array(weight.ravel()[nonzero], name)
    indices = onnx.numpy_helper.from_array(nonzero.astype(np.int64), name + ".indices")
    stored = gs.Variable(name, dtype=weight.dtype, shape=list(weight.shape))
    graph.nodes.append(gs.Node("Constant", name=name + ".constant", attrs={"sparse_value": onnx.helper.make_sparse_tensor(values, indices, weight.shape)},
                               outputs=[stored]))
    node.inputs[1] = stored
    return sparse_bytes


def _pattern_targets(layers: list[Layer], n: int, m: int, share: float) -> list[float]:
    """n:m for the `share` of layers it harms least (relative weight energy it removes), dense for the rest."""
    if share >= 1.0:
        return [1 - n / m] * len(layers)
    harm = []
    for layer in layers:
        rows = layer.rows().astype(np.float64)
        harm.append(float(((rows - magnitude_mask(rows, 0.0, n, m)) ** 2).sum() / ((rows**2).sum() or 1.0)))
    chosen = set(np.argsort(harm, kind="stable")[: int(np.floor(share * len(layers)))].tolist())
    return [1 - n / m if index in chosen else 0.0 for index in range(len(layers))]


def _targets(layers: list[Layer], hessians, options) -> list[float]:
    if options.allocation == "uniform" or not layers:
        return [options.sparsity] * len(layers)
    sizes = [layer.weight.size for layer in layers]
    if options.allocation == "global":
        magnitudes = np.concatenate([np.abs(layer.weight).ravel() for layer in layers])
        count = int(round(options.sparsity * magnitudes.size))
        if count == 0:
            return [0.0] * len(layers)
        threshold = np.partition(magnitudes, count - 1)[count - 1]
        return [float((np.abs(layer.weight) <= threshold).mean()) for layer in layers]
    curves = []
    for layer, hessian in zip(layers, hessians):
        rows = layer.rows().astype(np.float64)
        scale = np.diag(hessian) if hessian is not None else np.ones(rows.shape[1])
        curves.append(loss_curve((rows**2 * scale[None, :]).ravel()))
    counts = allocate(curves, int(round(options.sparsity * sum(sizes))), cap=options.max_ratio)
    return [count / size for count, size in zip(counts, sizes)]


def _done(rows: np.ndarray, target: float, n: int, m: int) -> bool:
    """Already at the target (a second run must change nothing)."""
    zeros = rows == 0
    if m:
        return bool((_groups_of(~zeros, m).sum(axis=-1) <= n).all())
    return zeros.sum() >= int(round(target * rows.size))


def _groups_of(rows: np.ndarray, m: int) -> np.ndarray:
    columns = rows.shape[1]
    padded = np.pad(rows, ((0, 0), (0, (-columns) % m)))
    return padded.reshape(rows.shape[0], -1, m)


def magnitude_mask(rows: np.ndarray, sparsity: float, n: int = 0, m: int = 0) -> np.ndarray:
    """Rows with the smallest-magnitude weights zeroed (per layer, or n kept in each m)."""
    if m:
        groups = _groups_of(np.abs(rows), m)
        order = np.argsort(groups, axis=-1, kind="stable")
        keep = np.zeros(groups.shape, dtype=bool)
        np.put_along_axis(keep, order[..., m - n :], True, axis=-1)
        keep = keep.reshape(rows.shape[0], -1)[:, : rows.shape[1]]
        return np.where(keep, rows, 0.0)
    count = int(round(sparsity * rows.size))
    pruned = rows.copy()
    if count:
        pruned.flat[np.argsort(np.abs(rows), axis=None, kind="stable")[:count]] = 0.0
    return pruned
