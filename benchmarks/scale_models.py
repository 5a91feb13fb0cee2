"""Synthetic models for the scale benchmark, generated outside the repo.

- `chain(nodes)`: one long chain of 8-node blocks: `Add` of a weight, `Relu`, an `Identity`
  (cleanup removes it), a `Mul` by `Add(a, b)` of two initializers (cleanup folds it), a
  `Transpose` pair that composes to the identity (fuse removes it) and a residual `Add`.
- `wide(nodes)`: a wide DAG: each layer fans out into 8 branches (`Mul` by a weight, `Relu`),
  joined by a `Sum` that also reads the layer before last (a residual branch skipping a layer);
  every fourth layer has a foldable `Add` of two initializers.
- `relu(nodes)`: a chain of `Relu` with nothing to optimize: the cost of doing nothing.
- `write_transformer(path, weight_bytes)`: a transformer-like stack (pre-norm single-head
  attention and an MLP per layer) with about `weight_bytes` of fp32 weights, streamed to an
  external data file beside `path` tensor by tensor, so generating it never holds the weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["chain", "wide", "relu", "FAMILIES", "write_transformer", "transformer_layers"]

_WIDTH = 16  # features per activation: small tensors, so graph size dominates, not arithmetic
_OPSET = 17


def _model(nodes, initializers, outputs_name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _WIDTH])],
        [helper.make_tensor_value_info(outputs_name, TensorProto.FLOAT, [1, _WIDTH])],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=8)


def _weight(name: str, rng: np.random.Generator, scale: float = 1.0) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(_WIDTH) * scale).astype(np.float32), name)


def chain(nodes: int, seed: int = 0) -> onnx.ModelProto:
    """About `nodes` nodes (a multiple of 8) in one chain of blocks; see the module docstring."""
    rng = np.random.default_rng(seed)
    graph_nodes, initializers, h = [], [], "x"
    for i in range(max(nodes // 8, 1)):
        p = f"b{i}_"
        initializers += [_weight(p + "c", rng, 0.1), _weight(p + "a", rng, 0.5), _weight(p + "b", rng, 0.5)]
        graph_nodes += [
            helper.make_node("Add", [h, p + "c"], [p + "t1"], name=p + "add"),
            helper.make_node("Relu", [p + "t1"], [p + "t2"], name=p + "relu"),
            helper.make_node("Identity", [p + "t2"], [p + "t3"], name=p + "identity"),
            helper.make_node("Add", [p + "a", p + "b"], [p + "s"], name=p + "fold"),
            helper.make_node("Mul", [p + "t3", p + "s"], [p + "t4"], name=p + "mul"),
            helper.make_node("Transpose", [p + "t4"], [p + "t5"], name=p + "tr1", perm=[1, 0]),
            helper.make_node("Transpose", [p + "t5"], [p + "t6"], name=p + "tr2", perm=[1, 0]),
            helper.make_node("Add", [p + "t6", h], [p + "h"], name=p + "residual"),
        ]
        h = p + "h"
    graph_nodes.append(helper.make_node("Identity", [h], ["y"], name="out"))
    return _model(graph_nodes, initializers, "y")


def wide(nodes: int, seed: int = 0, branches: int = 8) -> onnx.ModelProto:
    """About `nodes` nodes in layers of `branches` parallel branches; see the module docstring."""
    rng = np.random.default_rng(seed)
    per_layer = 2 * branches + 1
    graph_nodes, initializers, previous, h = [], [], "x", "x"
    for i in range(max(nodes // per_layer, 1)):
        p = f"l{i}_"
        joined = []
        for j in range(branches):
            weight = f"{p}w{j}"
            if i % 4 == 0 and j == 0:  # a foldable constant: Add of two initializers
                initializers += [_weight(weight + "a", rng, 0.25), _weight(weight + "b", rng, 0.25)]
                graph_nodes.append(helper.make_node("Add", [weight + "a", weight + "b"], [weight], name=weight + "_fold"))
            else:
                initializers.append(_weight(weight, rng, 0.25))
            graph_nodes += [
                helper.make_node("Mul", [h, weight], [f"{p}m{j}"], name=f"{p}mul{j}"),
                helper.make_node("Relu", [f"{p}m{j}"], [f"{p}r{j}"], name=f"{p}relu{j}"),
            ]
            joined.append(f"{p}r{j}")
        graph_nodes.append(helper.make_node("Sum", [*joined, previous], [p + "h"], name=p + "sum"))
        previous, h = h, p + "h"
    graph_nodes.append(helper.make_node("Identity", [h], ["y"], name="out"))
    return _model(graph_nodes, initializers, "y")


def relu(nodes: int, seed: int = 0) -> onnx.ModelProto:
    """`nodes` Relu nodes in a row: nothing for any pass to do."""
    graph_nodes = [helper.make_node("Relu", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"], name=f"relu{i}") for i in range(nodes - 1)]
    graph_nodes.append(helper.make_node("Relu", [f"t{nodes - 2}"], ["y"], name="out"))
    return _model(graph_nodes, [], "y")


FAMILIES = {"chain": chain, "wide": wide, "relu": relu}

_ALIGN = 4096  # page-aligned offsets let onnxruntime memory-map each tensor


def transformer_layers(weight_bytes: int, hidden: int, ff: int) -> int:
    per_layer = 4 * (4 * hidden * hidden + 2 * hidden * ff + ff + 5 * hidden)
    return max(1, round(weight_bytes / per_layer))


def write_transformer(path: Path, weight_bytes: int, *, hidden: int = 2048, ff: int = 8192, seq: int = 8, seed: int = 0) -> dict:
    """Writes the model to `path` and its weights to `path.name + ".data"`; returns its figures."""
    layers = transformer_layers(weight_bytes, hidden, ff)
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    initializers, nodes = [], []
    written = 0
    with open(path.with_name(data_name), "wb") as data:

        def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
            nonlocal written
            values = rng.standard_normal(shape, dtype=np.float32)
            values *= np.float32(scale)
            offset = -(-data.tell() // _ALIGN) * _ALIGN
            data.seek(offset)
            data.write(values.tobytes())
            proto = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            proto.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(values.nbytes))):
                entry = proto.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(proto)
            written += values.nbytes
            return name

        def small(name: str, values: np.ndarray) -> str:
            initializers.append(numpy_helper.from_array(values.astype(np.float32), name))
            return name

        h = "x"
        scale = np.array(1.0 / math.sqrt(hidden), dtype=np.float32)
        small("attn_scale", scale)
        for i in range(layers):
            p = f"layer{i}."
            ones, zeros = np.ones(hidden, np.float32), np.zeros(hidden, np.float32)
            nodes.append(helper.make_node("LayerNormalization", [h, small(p + "ln1.w", ones), small(p + "ln1.b", zeros)],
                                          [p + "n1"], name=p + "ln1", axis=-1))
            for proj in ("q", "k", "v"):
                nodes.append(helper.make_node("MatMul", [p + "n1", weight(p + f"w{proj}", (hidden, hidden), 0.02)],
                                              [p + proj], name=p + proj))
            nodes += [
                helper.make_node("Transpose", [p + "k"], [p + "kt"], name=p + "kt", perm=[0, 2, 1]),
                helper.make_node("MatMul", [p + "q", p + "kt"], [p + "scores"], name=p + "scores"),
                helper.make_node("Mul", [p + "scores", "attn_scale"], [p + "scaled"], name=p + "scale"),
                helper.make_node("Softmax", [p + "scaled"], [p + "probs"], name=p + "softmax", axis=-1),
                helper.make_node("MatMul", [p + "probs", p + "v"], [p + "ctx"], name=p + "ctx"),
                helper.make_node("MatMul", [p + "ctx", weight(p + "wo", (hidden, hidden), 0.02)], [p + "o"], name=p + "o"),
                helper.make_node("Add", [h, p + "o"], [p + "h1"], name=p + "res1"),
                helper.make_node("LayerNormalization", [p + "h1", small(p + "ln2.w", ones), small(p + "ln2.b", zeros)],
                                 [p + "n2"], name=p + "ln2", axis=-1),
                helper.make_node("MatMul", [p + "n2", weight(p + "w1", (hidden, ff), 0.02)], [p + "f1"], name=p + "fc1"),
                helper.make_node("Add", [p + "f1", small(p + "b1", np.zeros(ff, np.float32))], [p + "f1b"], name=p + "fc1.bias"),
                helper.make_node("Relu", [p + "f1b"], [p + "act"], name=p + "act"),
                helper.make_node("MatMul", [p + "act", weight(p + "w2", (ff, hidden), 0.02)], [p + "f2"], name=p + "fc2"),
                helper.make_node("Add", [p + "f2", small(p + "b2", zeros)], [p + "f2b"], name=p + "fc2.bias"),
                helper.make_node("Add", [p + "h1", p + "f2b"], [p + "out"], name=p + "res2"),
            ]
            h = p + "out"
        nodes.append(helper.make_node("Identity", [h], ["y"], name="output"))
    graph = helper.make_graph(
        nodes, "transformer_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return {"layers": layers, "hidden": hidden, "ff": ff, "weight_bytes": written, "nodes": len(nodes)}
