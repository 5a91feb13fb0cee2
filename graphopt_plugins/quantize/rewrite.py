"""The three rewrites: static QDQ, dynamic (DynamicQuantizeLinear + MatMulInteger), weight-only.

Static QDQ puts, per target, `Q -> DQ` on the activation input (one pair per tensor, shared by
every quantized reader), `DQ` on the int8 per-channel weight and on the int32 bias, and `Q -> DQ`
on the output (absorbing a Relu that alone reads it, as the uint8 clamp at zero point 0 is
that Relu), so that onnxruntime fuses QLinearConv / QGemm / QLinearMatMul. The output pair is
needed for MatMul too: without it onnxruntime's MatMul+Add fusion runs first and no int8
kernel is left. New nodes and tensors get unique `_q`-suffixed names; the node's outputs keep
their tensor objects, so graph outputs and other readers are untouched.

A weight read by several targets (an unrolled recurrence reuses one matrix at every time step)
is quantized once: one int8 initializer, one DequantizeLinear (or one MatMulInteger weight and
scale) that every reader shares, so the model shrinks instead of holding a copy per reader.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.quantize.numerics import activation_params, quantize_bias, quantize_blocked, quantize_per_channel
from graphopt_plugins.quantize.targets import Target

__all__ = ["apply_static", "apply_dynamic", "apply_weight_only", "activation_tensors", "quantize_embeddings"]


class UniqueNames:
    def __init__(self, graph: gs.Graph):
        self.taken = set(graph.tensors().keys()) | {node.name for node in graph.nodes}

    def __call__(self, base: str) -> str:
        name, index = f"{base}_q", 0
        while name in self.taken:
            index += 1
            name = f"{base}_q{index}"
        self.taken.add(name)
        return name


def activation_tensors(targets: list[Target], mode: str, signed: bool) -> list[str]:
    """The tensors whose ranges static quantization needs."""
    names = []
    for target in targets:
        names.append(target.activation)
        names.append(target.relu_output if target.relu_output and not signed else target.output)
    return list(dict.fromkeys(names))


def apply_static(graph: gs.Graph, targets: list[Target], ranges: dict, signed: bool, qmax: int = 127,
                 bias_shift: dict[int, np.ndarray] | None = None, prepared: dict | None = None) -> int:
    """Static QDQ on `targets`; `bias_shift[index]` (bias correction) is subtracted from a target's float bias;
    `prepared[index]` (weight name, int8 weight, scale: `weight_rounding`) replaces nearest per-channel rounding."""
    names = UniqueNames(graph)
    nodes = [graph.nodes[t.index] for t in targets]
    dequantized: dict[int, gs.Variable] = {}  # id(float tensor) -> its Q/DQ'd twin
    params: dict[int, tuple] = {}
    weights: dict[tuple, tuple] = {}  # (id(weight), axis) -> (its DQ output, scale): one copy per shared weight
    for target, node in zip(targets, nodes):
        x = node.inputs[0]
        if id(x) not in dequantized:
            scale, zero = activation_params(*ranges[x.name], signed)
            dequantized[id(x)] = _qdq(graph, names, x, scale, zero)
            params[id(dequantized[id(x)])] = (scale, zero)
        node.inputs[0] = dequantized[id(x)]
        x_scale = params[id(node.inputs[0])][0]
        w_scale = _dequantize_weight(graph, names, node, target, qmax, _prepared(prepared, target, node), weights)
        if len(node.inputs) > 2 and _is_channel_bias(node.inputs[2], len(w_scale)):
            float_bias = graph_queries.constant_value(node.inputs[2])
            if bias_shift and target.index in bias_shift and bias_shift[target.index].shape == float_bias.shape:
                float_bias = float_bias - bias_shift[target.index]
            bias, scale = quantize_bias(float_bias, x_scale, w_scale)
            node.inputs[2] = _dq(graph, names, node.inputs[2].name, bias, scale, np.zeros(len(scale), np.int32), axis=0)
        y = node.outputs[0]
        relu = y.outputs[0] if target.relu_output and not signed else None
        final = relu.outputs[0] if relu is not None else y
        scale, zero = activation_params(*ranges[final.name], signed)
        raw = gs.Variable(names(y.name), dtype=y.dtype, shape=y.shape)
        node.outputs[0] = raw
        if relu is not None:
            relu.inputs.clear()
            relu.outputs.clear()
            graph.nodes.remove(relu)
        quantized = gs.Variable(names(final.name), dtype=np.uint8 if not signed else np.int8, shape=y.shape)
        graph.nodes.append(gs.Node("QuantizeLinear", names(f"{final.name}_Q"), inputs=[raw, _const(names, "scale", scale),
                                   _const(names, "zero_point", zero)], outputs=[quantized]))
        graph.nodes.append(gs.Node("DequantizeLinear", names(f"{final.name}_DQ"), inputs=[quantized, _const(names, "scale", scale),
                                   _const(names, "zero_point", zero)], outputs=[final]))
        dequantized[id(final)] = final
        params[id(final)] = (scale, zero)
    return len(targets)


def apply_dynamic(graph: gs.Graph, targets: list[Target], qmax: int = 127, prepared: dict | None = None) -> int:
    """MatMul / Gemm -> DynamicQuantizeLinear, MatMulInteger (u8 x s8), Cast, Mul by both scales.

    Weights are int8 in [-qmax, qmax]: 63 where the int8 kernel saturates (see `kernels`)."""
    names = UniqueNames(graph)
    done = 0
    quantized_inputs: dict[int, tuple] = {}
    weights: dict[int, tuple] = {}  # id(weight) -> (int8 weight, zero points, scales): one copy per shared weight
    for target, node in [(t, graph.nodes[t.index]) for t in targets]:
        if target.op not in ("MatMul", "Gemm"):
            continue
        weight = graph_queries.constant_value(node.inputs[1])
        if weight.ndim != 2:
            continue  # MatMulInteger's per-column zero point is defined for a 2-D weight only
        transposed = target.op == "Gemm" and int(node.attrs.get("transB", 0))
        key = (id(node.inputs[1]), bool(transposed))
        if key not in weights:
            made = _prepared(prepared, target, node)
            if made is not None:
                q_weight, w_scale = (made[0].T if transposed else made[0]), made[1]
            else:
                q_weight, w_scale = quantize_per_channel(weight.T if transposed else weight, 1, qmax)
            weights[key] = (_const(names, node.inputs[1].name, q_weight), _const(names, "w_zero", np.zeros(w_scale.shape, np.int8)),
                            _const(names, "w_scale", w_scale))
        q_const, w_zero, w_scale = weights[key]
        x = node.inputs[0]
        if id(x) not in quantized_inputs:
            outs = [gs.Variable(names(f"{x.name}_{kind}"), dtype=dtype, shape=shape)
                    for kind, dtype, shape in (("u8", np.uint8, x.shape), ("scale", np.float32, []), ("zero", np.uint8, []))]
            graph.nodes.append(gs.Node("DynamicQuantizeLinear", names(f"{x.name}_DynQ"), inputs=[x], outputs=outs))
            quantized_inputs[id(x)] = outs
        xq, xs, xz = quantized_inputs[id(x)]
        y = node.outputs[0]
        acc = gs.Variable(names(f"{y.name}_int32"), dtype=np.int32)
        as_float = gs.Variable(names(f"{y.name}_float"), dtype=np.float32)
        both = gs.Variable(names(f"{y.name}_scale"), dtype=np.float32)
        graph.nodes.append(gs.Node("MatMulInteger", names(f"{node.name}_MatMulInteger"),
                                   inputs=[xq, q_const, xz, w_zero], outputs=[acc]))
        graph.nodes.append(gs.Node("Cast", names(f"{node.name}_Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[acc], outputs=[as_float]))
        graph.nodes.append(gs.Node("Mul", names(f"{node.name}_scales"), inputs=[xs, w_scale], outputs=[both]))
        bias = node.inputs[2] if target.op == "Gemm" and len(node.inputs) > 2 else None
        scaled = y if bias is None else gs.Variable(names(f"{y.name}_nobias"), dtype=np.float32)
        graph.nodes.append(gs.Node("Mul", names(f"{node.name}_rescale"), inputs=[as_float, both], outputs=[scaled]))
        if bias is not None:
            graph.nodes.append(gs.Node("Add", names(f"{node.name}_bias"), inputs=[scaled, bias], outputs=[y]))
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.remove(node)
        done += 1
    return done


def apply_weight_only(graph: gs.Graph, targets: list[Target], bits: int, block_size: int) -> int:
    """Weights stored as int8 per channel, or int4 in blocks along the reduction axis, read through DQ."""
    names = UniqueNames(graph)
    weights: dict[tuple, tuple] = {}  # one DequantizeLinear per shared weight
    for target, node in [(t, graph.nodes[t.index]) for t in targets]:
        if bits == 8:
            _dequantize_weight(graph, names, node, target, weights=weights)
            continue
        weight = node.inputs[1]
        key = (id(weight), target.reduction_axis)
        if key in weights:
            node.inputs[1] = weights[key][0]
            continue
        quantized, scale = quantize_blocked(graph_queries.constant_value(weight), target.reduction_axis, block_size)
        # graphsurgeon cannot convert numpy to INT4; a lazily held TensorProto is exported as is.
        proto = onnx.helper.make_tensor(names(weight.name), onnx.TensorProto.INT4, quantized.shape, quantized.ravel().tolist())
        q_const = gs.Constant(proto.name, gs.ir.tensor.LazyValues(proto))
        out = gs.Variable(names(f"{weight.name}_dequantized"), dtype=np.float32, shape=list(weight.shape))
        graph.nodes.append(gs.Node("DequantizeLinear", names(f"{weight.name}_DQ"),
                                   attrs={"axis": target.reduction_axis, "block_size": block_size},
                                   inputs=[q_const, _const(names, f"{weight.name}_scale", scale)], outputs=[out]))
        weights[key] = (out, scale)
        node.inputs[1] = out
    return len(targets)


def quantize_embeddings(graph: gs.Graph, nodes: list[gs.Node]) -> int:
    """Gather tables (embeddings) stored as int8 with one scale per row; only the rows read are dequantized.

    `Gather(int8 table, ids) -> Cast -> Mul(Gather(row scales, ids))`: a DequantizeLinear in
    front of the Gather would dequantize the whole table on every run (onnxruntime does not
    fold it), which for a 30k-word vocabulary costs more than the layers quantization saves.
    """
    names = UniqueNames(graph)
    for node in nodes:
        table, ids, rows = node.inputs[0], node.inputs[1], node.outputs[0]
        quantized, scale = quantize_per_channel(graph_queries.constant_value(table), 0)
        gathered = gs.Variable(names(f"{rows.name}_int8"), dtype=np.int8)
        as_float = gs.Variable(names(f"{rows.name}_float"), dtype=np.float32)
        row_scales = gs.Variable(names(f"{rows.name}_scale"), dtype=np.float32)
        node.inputs[0] = _const(names, table.name, quantized)
        node.outputs[0] = gathered
        graph.nodes.append(gs.Node("Cast", names(f"{node.name}_Cast"), attrs={"to": onnx.TensorProto.FLOAT},
                                   inputs=[gathered], outputs=[as_float]))
        # (V, 1) so that the gathered scales, (*ids.shape, 1), broadcast over each row.
        graph.nodes.append(gs.Node("Gather", names(f"{node.name}_scales"), attrs={"axis": 0},
                                   inputs=[_const(names, f"{table.name}_scale", scale[:, None]), ids], outputs=[row_scales]))
        graph.nodes.append(gs.Node("Mul", names(f"{node.name}_dequantize"), inputs=[as_float, row_scales], outputs=[rows]))
    return len(nodes)


def _prepared(prepared: dict | None, target: Target, node: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """The int8 weight and scale made for this node's weight, unless the weight changed since (smoothing)."""
    entry = (prepared or {}).get(target.index)
    if entry is None or entry[0] != node.inputs[1].name or entry[1].shape != tuple(node.inputs[1].shape):
        return None
    return entry[1], entry[2]


def _dequantize_weight(graph, names, node: gs.Node, target: Target, qmax: int = 127, made=None,
                       weights: dict | None = None) -> np.ndarray:
    """Points `node` at its weight's int8 per-channel DequantizeLinear (`made`: a prepared int8 weight
    and scale), made once per weight and axis in `weights`; returns the per-channel scale."""
    weight = node.inputs[1]
    key = (id(weight), target.axis)
    if weights is None or key not in weights:
        quantized, scale = made or quantize_per_channel(graph_queries.constant_value(weight), target.axis, qmax)
        out = _dq(graph, names, weight.name, quantized, scale, np.zeros(len(scale), np.int8), axis=target.axis, keep_zero=target.op != "Conv",
                  shape=list(weight.shape))
        if weights is not None:
            weights[key] = (out, scale)
    else:
        out, scale = weights[key]
    node.inputs[1] = out
    return scale


def _is_channel_bias(tensor: gs.Tensor, channels: int) -> bool:
    value = graph_queries.constant_value(tensor)
    return value is not None and value.dtype == np.float32 and value.shape == (channels,)


def _dq(graph, names, base: str, quantized: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, shape=None, keep_zero=False) -> gs.Variable:
    """A DequantizeLinear of the constant `quantized`; an all-zero `zero` is left out (the default),
    as a per-channel zero vector weighs as much as the int8 weight's channels, or the int32 bias."""
    out = gs.Variable(names(f"{base}_dequantized"), dtype=np.float32, shape=shape or list(quantized.shape))
    inputs = [_const(names, base, quantized), _const(names, f"{base}_scale", scale)]
    if keep_zero or np.any(zero):
        inputs.append(_const(names, f"{base}_zero_point", zero))
    graph.nodes.append(gs.Node("DequantizeLinear", names(f"{base}_DQ"), attrs={"axis": axis}, inputs=inputs, outputs=[out]))
    return out


def _qdq(graph, names, x: gs.Tensor, scale: np.ndarray, zero: np.ndarray) -> gs.Variable:
    quantized = gs.Variable(names(f"{x.name}_quantized"), dtype=zero.dtype, shape=x.shape)
    out = gs.Variable(names(f"{x.name}_dequantized"), dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", names(f"{x.name}_Q"), inputs=[x, _const(names, "scale", scale),
                               _const(names, "zero_point", zero)], outputs=[quantized]))
    graph.nodes.append(gs.Node("DequantizeLinear", names(f"{x.name}_DQ"), inputs=[quantized, _const(names, "scale", scale),
                               _const(names, "zero_point", zero)], outputs=[out]))
    return out


def _const(names, base: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(names(base), np.asarray(value))
