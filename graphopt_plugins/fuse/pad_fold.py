"""A constant Pad of the spatial axes folded into the pads of the Conv, AveragePool or MaxPool after it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import sole_reader
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["fold_pad_into_window"]

RULE = "pad_fold"
_WINDOWS = ("Conv", "AveragePool", "MaxPool")


def fold_pad_into_window(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Window(Pad(x))` as `Window(x)` with the Pad's amounts added to the window's `pads`.

    The Pad must be in constant mode, pad only the spatial axes (2 and up), by non-negative
    constant amounts, with the value the window itself pads with: 0 for a Conv; 0 for an
    AveragePool that counts padding (`count_include_pad=1`, so the zeros still count in the
    average); -inf for a MaxPool (a MaxPool never reads its own padding).

    Does not fire when: the Pad's mode is reflect/edge/wrap; an amount is negative (a crop) or
    not a constant, or a batch/channel axis is padded; the value differs from the window's
    (any other value for a Conv, or for an AveragePool with `count_include_pad=0`); the
    window uses `auto_pad`; a pool's pads would reach its kernel size; the Pad's output has another reader or is a graph output; the
    input's rank is unknown.
    """
    rewritten = 0
    local = ctx.local_nodes()  # partners in nested bodies or outer graphs are never merged
    for pad in list(graph.nodes):
        if pad.op != "Pad" or not pad.inputs:
            continue
        window = sole_reader(pad.outputs[0], ctx)
        if window is None or window.op not in _WINDOWS or id(window) not in local or window.inputs[0] is not pad.outputs[0]:
            continue
        reason = _refusal(pad, window)
        if reason is None:
            amounts = _pad_amounts(pad)
            rank = len(amounts) // 2
            spatial = rank - 2
            old = [int(p) for p in window.attrs.get("pads", [0] * (2 * spatial))]
            window.attrs["pads"] = [old[i] + amounts[2 + i] for i in range(spatial)] + [
                old[spatial + i] + amounts[rank + 2 + i] for i in range(spatial)
            ]
            window.inputs[0] = pad.inputs[0]
            pad.inputs.clear()
            pad.outputs.clear()
            rewritten += 1
        else:
            ctx.near_miss(RULE, pad, reason)
    return rewritten


def _refusal(pad: gs.Node, window: gs.Node) -> str | None:
    mode = pad.attrs.get("mode", "constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return f"Pad mode is {mode}"
    amounts = _pad_amounts(pad)
    if amounts is None:
        return "the pad amounts are not constants, or the rank is unknown"
    rank = len(amounts) // 2
    if min(amounts) < 0 or amounts[0] or amounts[1] or amounts[rank] or amounts[rank + 1]:
        return "it crops, or pads the batch or channel axis"
    auto_pad = window.attrs.get("auto_pad", "NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
        return f"the {window.op} uses auto_pad"
    kernel = window.attrs.get("kernel_shape")
    if window.op != "Conv":
        spatial = rank - 2
        old = [int(p) for p in window.attrs.get("pads", [0] * (2 * spatial))]
        if kernel is None or any(
            old[i] + amounts[2 + i] >= kernel[i] or old[spatial + i] + amounts[rank + 2 + i] >= kernel[i] for i in range(spatial)
        ):
            return f"the {window.op}'s pads would not stay smaller than its kernel"
    value = _pad_value(pad)
    if value is None:
        return "the pad value is not a constant"
    if window.op == "MaxPool":
        return None if value == -np.inf else "a MaxPool folds only a -inf Pad"
    if value != 0:
        return f"a {window.op} pads with 0, the Pad with {value}"
    if window.op == "AveragePool" and not int(window.attrs.get("count_include_pad", 0)):
        return "the AveragePool does not count padding (count_include_pad=0)"
    return None


def _pad_amounts(pad: gs.Node) -> list[int] | None:
    """[begin per axis…, end per axis…] over every axis of the input, or None."""
    if "pads" in pad.attrs:
        return [int(p) for p in pad.attrs["pads"]]
    if len(pad.inputs) < 2:
        return None
    values = graph_queries.constant_value(pad.inputs[1])
    if values is None:
        return None
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    axes_tensor = pad.inputs[3] if len(pad.inputs) > 3 and pad.inputs[3].name else None
    if axes_tensor is None:
        return values
    axes = graph_queries.constant_value(axes_tensor)
    shape = pad.inputs[0].shape
    if axes is None or shape is None:
        return None
    rank = len(shape)
    full = [0] * (2 * rank)
    for position, axis in enumerate(int(a) % rank for a in np.asarray(axes).reshape(-1)):
        full[axis], full[rank + axis] = values[position], values[len(values) // 2 + position]
    return full


def _pad_value(pad: gs.Node) -> float | None:
    if "value" in pad.attrs:
        return float(pad.attrs["value"])
    if len(pad.inputs) < 3 or not pad.inputs[2].name:
        return 0.0
    value = graph_queries.constant_value(pad.inputs[2])
    return None if value is None else float(np.asarray(value).reshape(-1)[0])
