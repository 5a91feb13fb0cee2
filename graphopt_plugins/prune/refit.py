"""Sequential least-squares refit of the layers that lost input channels (structured reconstruction).

After the graph has shrunk, each *sink* (a Conv/ConvTranspose/Gemm/MatMul whose input lost
channels) is refit so that, on calibration data, its output from the pruned model's input
matches the unpruned model's output: with `x_o` the original input features at a position and
`x_p` the pruned model's (already refit upstream), `x_o ≈ M [x_p, 1]` is solved by ridge least
squares and the sink's original weight `W_o` becomes `W_o M` (bias `W_o m`). For Gemm/MatMul this
is exactly the least-squares fit of the output; for a Conv it is the fit position by position.
Sinks are refit level by level in topological order (at most `rounds` rounds: deep models
merge consecutive levels), so a later layer sees the earlier refits (layer-wise distillation from the
original model, no training loop).
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import convert, graph_queries
from graphopt.statistics import quadratic_form, ridge_solve
from graphopt.activations import iter_activations
from graphopt_plugins.prune.reconstruct import as_rows, from_rows

__all__ = ["SinkRecord", "refit_sinks"]


@dataclasses.dataclass
class SinkRecord:
    node: gs.Node
    tensor: str  # the sink's input (same name in both models)
    axis: int  # its feature axis
    in_axis: int  # the weight's input-feature axis
    weight: np.ndarray  # the original weight, output rows already cut to what the sink keeps
    bias: np.ndarray | None  # the original bias (cut likewise), or None
    errors: tuple[float, float] = (0.0, 0.0)  # relative output error before / after the refit


def refit_sinks(graph: gs.Graph, original: onnx.ModelProto, records: list[SinkRecord], samples: dict, max_rows: int, damp: float,
                rounds: int = 32, track=lambda items, desc, total: items, tune_damp: bool = False,
                cache: dict | None = None) -> None:
    """Refits every record's node in place, level by level; fills `record.errors`.

    With `tune_damp`, each sink's ridge is chosen from `_DAMP_GRID` by two-fold cross-validation
    over the samples (even ones fit, odd ones judge, and back), and the refit is kept only when
    it beats the plain cut on the held-out fold: one-shot least squares on few images overfits
    (PP-OCR cls lost accuracy on unseen images). `track` is `PassContext.track` or a no-op.

    The unpruned model's rows are the same at every level and for every strength the pass
    tries: they come from `cache` (`{(tensor, axis, max_rows): [rows per sample]}`, filled by
    one run of `original` for what it lacks), so each level runs only the pruned model.
    """
    levels = _levels(graph, records, rounds)
    cache = {} if cache is None else cache
    _cache_original_rows(original, samples, records, max_rows, cache)
    for level in track(levels, desc="prune: refit", total=len(levels)):
        pruned = onnx.shape_inference.infer_shapes(convert.export_model(graph, original), strict_mode=False)
        names = sorted({record.tensor for record in level})
        folds: dict[int, list] = {id(record): [0, 0] for record in level}  # Gram of even / odd samples
        for index, values_p in enumerate(iter_activations(pruned, samples, names)):
            for record in level:
                x_o = cache[(record.tensor, record.axis, max_rows)][index].astype(np.float64)
                x_p = _rows(values_p[record.tensor], record.axis)
                keep = _kept_rows(len(x_p), max_rows)
                joint = np.concatenate([x_o, x_p[keep], np.ones((len(keep), 1))], axis=1)
                folds[id(record)][index % 2] = folds[id(record)][index % 2] + joint.T @ joint
        for record in level:
            even, odd = folds[id(record)]
            _refit(record, even + odd, _best_damp(record, even, odd) if tune_damp and not np.isscalar(odd) else damp)


def _cache_original_rows(original: onnx.ModelProto, samples: dict, records: list[SinkRecord], max_rows: int, cache: dict) -> None:
    """Adds to `cache` the unpruned model's rows (float32, as computed) of every record's input it lacks."""
    missing = sorted({(record.tensor, record.axis, max_rows) for record in records} - cache.keys())
    if not missing:
        return
    found: dict[tuple, list[np.ndarray]] = {key: [] for key in missing}
    for values in iter_activations(original, samples, sorted({tensor for tensor, _, _ in missing})):
        for tensor, axis, limit in missing:
            rows = np.moveaxis(values[tensor], axis, -1)
            rows = rows.reshape(-1, rows.shape[-1])
            found[(tensor, axis, limit)].append(np.array(rows[_kept_rows(len(rows), limit)], dtype=np.float32))
    cache.update(found)


def _kept_rows(count: int, limit: int) -> np.ndarray:
    """The same `limit` evenly spaced positions in both models."""
    return np.linspace(0, count - 1, min(count, limit)).round().astype(np.int64)


def _rows(value: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(value, axis, -1)
    return moved.reshape(-1, moved.shape[-1]).astype(np.float64)


def _levels(graph: gs.Graph, records: list[SinkRecord], rounds: int) -> list[list[SinkRecord]]:
    """Records grouped so that no sink in a level feeds another sink of the same level."""
    view = graph_queries.to_networkx(graph)
    by_node = {id(record.node): record for record in records}
    depth: dict[int, int] = {}
    for vertex in nx.topological_sort(view):
        above = [depth[p] + (1 if p in by_node else 0) for p in view.predecessors(vertex)]
        depth[vertex] = max(above, default=0)
    levels: dict[int, list[SinkRecord]] = {}
    for record in records:
        levels.setdefault(depth[id(record.node)], []).append(record)
    ordered = [levels[key] for key in sorted(levels)]
    # Each round costs two model runs over the samples: deep models merge consecutive levels
    # (a sink then sees the refit of sinks in earlier rounds only).
    per_round = -(-len(ordered) // rounds)
    return [sum(ordered[i : i + per_round], []) for i in range(0, len(ordered), per_round)]


_DAMP_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ridge relative to the mean diagonal, tried by tune_damp


def _solve(record: SinkRecord, gram: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(refit rows, offset or None): `W_o M` fitted on `gram` with ridge `damp`."""
    rows_o = as_rows(record.weight, record.in_axis).astype(np.float64)
    features = rows_o.shape[1]
    kept = len(gram) - 1 - features
    intercept = record.node.op in ("Conv", "Gemm")
    basis = np.arange(features, features + kept + (1 if intercept else 0))
    if intercept:
        basis[-1] = len(gram) - 1
    coef = ridge_solve(gram[np.ix_(basis, basis)], gram[np.ix_(basis, np.arange(features))], relative=damp)  # (basis, F)
    return rows_o @ coef[:kept].T, (rows_o @ coef[kept] if intercept else None)


def _best_damp(record: SinkRecord, even: np.ndarray, odd: np.ndarray) -> float | None:
    """The grid ridge with the least two-fold held-out error, or None when none beats the plain cut."""
    rows_o = as_rows(record.weight, record.in_axis).astype(np.float64)
    features = rows_o.shape[1]
    kept = len(even) - 1 - features
    current = as_rows(graph_queries.constant_value(record.node.inputs[1]), record.in_axis).astype(np.float64)
    plain = sum(_error(held, rows_o, current, None, features, kept) for held in (even, odd))
    scores = {damp: sum(_error(held, rows_o, *_solve(record, fit, damp), features, kept) for fit, held in ((even, odd), (odd, even)))
              for damp in _DAMP_GRID}
    best = min(scores, key=scores.get)
    return best if scores[best] < plain else None


def _refit(record: SinkRecord, gram: np.ndarray, damp: float | None) -> None:
    node = record.node
    rows_o = as_rows(record.weight, record.in_axis).astype(np.float64)
    features = rows_o.shape[1]
    kept = len(gram) - 1 - features
    current = as_rows(graph_queries.constant_value(node.inputs[1]), record.in_axis).astype(np.float64)
    before = _error(gram, rows_o, current, None, features, kept)
    if damp is None:
        record.errors = (before, before)
        return  # worse than the plain cut on held-out samples
    new_rows, offset = _solve(record, gram, damp)
    after = _error(gram, rows_o, new_rows, offset, features, kept)
    record.errors = (before, after)
    basis = kept + (1 if offset is not None else 0)
    if after >= before or gram[-1, -1] < 4 * basis:
        record.errors = (before, before)
        return  # no gain on its own data, or too few rows to trust the fit: keep the plain cut
    like = graph_queries.constant_value(node.inputs[1])
    node.inputs[1] = gs.Constant(node.inputs[1].name + ".refit", from_rows(new_rows, like, record.in_axis))
    if offset is not None:
        delta = offset.reshape(np.moveaxis(like, record.in_axis, -1).shape[:-1])
        delta = delta.reshape(delta.shape[0], -1).sum(axis=1)  # every kernel tap adds the same offset
        base = np.zeros(len(delta)) if record.bias is None else np.broadcast_to(record.bias, (len(delta),)).astype(np.float64)
        bias = gs.Constant(f"{node.inputs[1].name}.bias", (base + delta).astype(record.weight.dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = bias
        else:
            node.inputs.append(bias)


def _error(gram: np.ndarray, rows_o: np.ndarray, rows: np.ndarray, offset, features: int, kept: int) -> float:
    """‖W_o x_o − (W x_p + b)‖² / ‖W_o x_o‖² on the calibration rows, from the joint Gram."""
    combined = np.zeros((rows_o.shape[0], len(gram)))
    combined[:, :features] = rows_o
    combined[:, features : features + kept] = -rows
    if offset is not None:
        combined[:, -1] = -offset
    error = float(quadratic_form(combined, gram, combined))
    total = float(quadratic_form(rows_o, gram[:features, :features], rows_o)) or 1.0
    return error / total
