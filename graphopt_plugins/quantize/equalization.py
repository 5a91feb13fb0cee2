"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): channel ranges evened out.

Where a Conv feeds another Conv directly or through a Relu, `Conv2(relu(Conv1(x)))` is unchanged
when output channel i of Conv1 (its weights and bias) is divided by s_i > 0 and input channel i
of Conv2 is multiplied by s_i, because relu(x / s) = relu(x) / s. With r1_i the range of Conv1's
output channel i and r2_i the range of Conv2's input channel i, s_i = sqrt(r1_i * r2_i) / r2_i
leaves both at sqrt(r1_i * r2_i): a depthwise Conv whose channels span 100x (MobileNet exports,
BatchNorm folded) no longer needs one weight scale for all of them, and the tensor between the
two, quantized per tensor, has even channels too. Chains (pointwise -> depthwise -> pointwise)
are equalized pair by pair, a few rounds, until the scales settle.

That balances weights, which is what per-tensor weight scales need. With per-channel weight
scales the first Conv's rows are quantized on their own scale whatever s is; what s changes
there is the tensor between the two Convs, quantized per tensor. So with calibration data
(`middle_ranges`) r1_i is that tensor's range in channel i instead: s_i evens out its channels
against the second Conv's input channels (the SmoothQuant trade at alpha 0.5, for Conv pairs).

Fires on: Conv -> Conv and Conv -> Relu -> Conv (any `group` on either side; a depthwise Conv
followed by a pointwise Conv is the case that matters), constant weights and bias, the middle
tensor read by the next node only and not a graph output. Refuses: any other activation
(Relu6/Clip would need its bound rescaled per channel, HardSwish/SiLU/Sigmoid are not
positive-homogeneous), ConvTranspose, Gemm/MatMul, a Conv whose weight or bias is not a constant.
Lossless in exact arithmetic; in float32 the outputs agree to rounding (relative ~1e-6).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import convert, graph_queries
from graphopt.activations import iter_activations

__all__ = ["equalization_pairs", "equalize", "equalized_model", "middle_ranges"]

logger = logging.getLogger(__name__)
_ROUNDS = 8
_SETTLED = 1e-3  # a round that moves no scale by more than this ends the iteration
_CLAMP = (1e-3, 1e3)  # one scale per round at most: a dead channel must not blow up its partner


def _conv_with_constants(node: gs.Node | None) -> bool:
    if node is None or node.op != "Conv" or len(node.inputs) < 2 or graph_queries.constant_value(node.inputs[1]) is None:
        return False
    return len(node.inputs) < 3 or not node.inputs[2].name or graph_queries.constant_value(node.inputs[2]) is not None


def _sole_reader(tensor: gs.Tensor, outputs: set[int]) -> gs.Node | None:
    readers = graph_queries.consumers(tensor)
    return readers[0] if len(readers) == 1 and id(tensor) not in outputs else None


def equalization_pairs(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node]]:
    """(first Conv, second Conv) pairs of the main graph that can be equalized, in node order."""
    outputs = graph_queries.graph_output_ids(graph)
    pairs = []
    for first in graph.nodes:
        if not _conv_with_constants(first):
            continue
        middle = first.outputs[0]
        second = _sole_reader(middle, outputs)
        if second is not None and second.op == "Relu":
            middle = second.outputs[0]
            second = _sole_reader(middle, outputs)
        if not _conv_with_constants(second) or second.inputs[0] is not middle:
            logger.debug("equalize: %s is not followed by a Conv (directly or through one Relu)", first.name)
            continue
        if graph_queries.constant_value(second.inputs[1]).shape[1] * int(second.attrs.get("group", 1)) != \
                graph_queries.constant_value(first.inputs[1]).shape[0]:
            continue
        pairs.append((first, second))
    return pairs


def _input_view(weight: np.ndarray, groups: int) -> np.ndarray:
    """`weight` (O, I/g, k...) as (I, O/g * k...): row i holds every weight that reads input channel i."""
    out_channels, per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out_channels // groups, per_group, -1)
    return grouped.transpose(0, 2, 1, 3).reshape(groups * per_group, -1)


def _scale_inputs(weight: np.ndarray, groups: int, scale: np.ndarray) -> np.ndarray:
    out_channels, per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out_channels // groups, per_group, -1)
    grouped = grouped * scale.reshape(groups, 1, per_group, 1)
    return grouped.reshape(weight.shape)


def equalize(graph: gs.Graph, ranges: Mapping[str, np.ndarray] | None = None) -> int:
    """Equalizes every pair `equalization_pairs` finds; returns how many pairs changed.

    With `ranges` (per channel, of the tensor between the two: `middle_ranges`), that tensor's
    range stands in for the first Conv's weight range (per-channel weights: see the module)."""
    pairs = equalization_pairs(graph)
    if not pairs:
        return 0
    weights = {id(n): graph_queries.constant_value(n.inputs[1]).astype(np.float64) for pair in pairs for n in pair}
    biases = {id(n): graph_queries.constant_value(n.inputs[2]).astype(np.float64) for pair in pairs for n in pair
              if len(n.inputs) > 2 and n.inputs[2].name}
    nodes = {id(n): n for pair in pairs for n in pair}
    middles = {id(first): ranges[_middle(first).name].astype(np.float64) for first, _ in pairs
               if ranges and _middle(first).name in ranges}
    moved = set()
    for _ in range(_ROUNDS):
        largest = 0.0
        for first, second in pairs:
            w1, w2, groups = weights[id(first)], weights[id(second)], int(second.attrs.get("group", 1))
            r1 = middles.get(id(first), np.max(np.abs(w1.reshape(w1.shape[0], -1)), axis=1))
            r2 = np.max(np.abs(_input_view(w2, groups)), axis=1)
            live = (r1 > 0) & (r2 > 0)
            scale = np.ones_like(r1)
            scale[live] = np.clip(np.sqrt(r1[live] * r2[live]) / r2[live], *_CLAMP)
            weights[id(first)] = w1 / scale.reshape(-1, *([1] * (w1.ndim - 1)))
            if id(first) in biases:
                biases[id(first)] = biases[id(first)] / scale
            weights[id(second)] = _scale_inputs(w2, groups, scale)
            if id(first) in middles:
                middles[id(first)] = middles[id(first)] / scale
            change = float(np.max(np.abs(np.log(scale))))
            if change > _SETTLED:
                moved.add((id(first), id(second)))
            largest = max(largest, change)
        if largest <= _SETTLED:
            break
    touched = {i for pair in moved for i in pair}
    for key in touched:
        node = nodes[key]
        node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_equalized_{node.name}", weights[key].astype(np.float32))
        if key in biases:
            node.inputs[2] = gs.Constant(f"{node.inputs[2].name}_equalized_{node.name}", biases[key].astype(np.float32))
    logger.debug("equalize: %d of %d pairs rescaled", len(moved), len(pairs))
    return len(moved)


def _middle(first: gs.Node) -> gs.Tensor:
    """The tensor the second Conv of a pair reads: the first's output, or the Relu's after it."""
    out = first.outputs[0]
    return out.outputs[0].outputs[0] if out.outputs and out.outputs[0].op == "Relu" else out


def middle_ranges(model: onnx.ModelProto, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """max |x| per channel (axis 1) over `samples` of every tensor between two equalizable Convs."""
    names = [_middle(first).name for first, _ in equalization_pairs(convert.import_graph(model))]
    found: dict[str, np.ndarray] = {}
    for values in iter_activations(model, samples, names):
        for name in names:
            value = np.abs(np.asarray(values[name], np.float32))
            peak = value.max(axis=tuple(i for i in range(value.ndim) if i != 1))
            found[name] = np.maximum(found[name], peak) if name in found else peak
    return found


def equalized_model(model: onnx.ModelProto, ranges: Mapping[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, int]:
    """(`model` with its pairs equalized, how many pairs changed); `model` itself when none did."""
    graph = convert.import_graph(model)
    changed = equalize(graph, ranges)
    return (convert.export_model(graph, model), changed) if changed else (model, 0)
