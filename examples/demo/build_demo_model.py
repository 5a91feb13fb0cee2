"""Build ``demo.onnx``: a small image classifier shaped like a real PyTorch export.

graphopt needs a demo input that looks like what users actually feed it, not a
toy chain of Adds.  This script writes, with ``onnx.helper`` and numpy only, the
graph that ``torch.onnx.export`` (TorchScript exporter, opset 17, exported with
``do_constant_folding=False`` so BatchNormalization is kept) would emit for::

    stem        Conv3x3(3->16) + BN + ReLU
    res block   Conv+BN+ReLU, Conv+BN, + skip, ReLU
    sep conv    depthwise Conv3x3(group=16)+BN+ReLU, pointwise Conv1x1(16->32)+BN+ReLU
    pool        MaxPool 2x2/2                         -> [1, 32, 16, 16]
    attention   x.flatten(2).transpose(1, 2)          -> [1, 256, 32] tokens
                single-head self-attention + residual, LayerNorm
    head        mean over tokens, Linear(32->64), GELU(erf), Linear(64->10)

Ops are decomposed the way the exporter writes them when no fused op is used
(LayerNorm as ReduceMean/Sub/Pow/.../Add, as a hand-written LayerNorm module
exports; GELU as Div/Erf/Add/Mul/Mul; Linear as MatMul+Add; BN kept as-is),
tensors carry exporter-style names (``/attn/q_proj/MatMul_output_0``), and the
usual export litter is left in on purpose so the ``cleanup`` pass has work to do:

* an ``Identity`` node and an inference-mode ``Dropout`` node;
* ``x.flatten(2)`` whose target shape is computed at run time as
  Shape -> Gather -> Unsqueeze -> Concat although every shape is static;
* a duplicate initializer: the two Unsqueeze ``axes`` tensors of that pattern
  are separate initializers holding the same value ``[0]``;
* a ``Constant`` node (the attention scale).

Weights come from ``np.random.default_rng(0)`` and the file is byte-identical
on every run.  Rebuild with ``python examples/demo/build_demo_model.py``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
IMAGE_SHAPE = [1, 3, 32, 32]
NUM_CLASSES = 10
BN_EPS = 1e-5
LN_EPS = 1e-5
OUTPUT_PATH = Path(__file__).with_name("demo.onnx")


class GraphBuilder:
    """Collects nodes and initializers; hands out exporter-style names."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._onnx_counter = 0

    def param(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def constant(self, op_hint: str, array: np.ndarray) -> str:
        """Anonymous exporter constant, named like ``onnx::Concat_12``."""
        self._onnx_counter += 1
        return self.param(f"onnx::{op_hint}_{self._onnx_counter}", array)

    def op(self, op_type: str, scope: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        scope = scope.replace(".", "/")  # torch module path -> exporter scope
        outputs = [f"{scope}/{op_type}_output_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=f"{scope}/{op_type}", **attrs)
        )
        return outputs

    def op1(self, op_type: str, scope: str, inputs: list[str], **attrs) -> str:
        return self.op(op_type, scope, inputs, **attrs)[0]

    def random(self, shape: list[int], std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(self, shape: list[int], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)


def conv(g: GraphBuilder, x: str, scope: str, c_in: int, c_out: int, k: int, group: int = 1) -> str:
    fan_in = (c_in // group) * k * k
    w = g.param(f"{scope}.weight", g.random([c_out, c_in // group, k, k], math.sqrt(2.0 / fan_in)))
    b = g.param(f"{scope}.bias", g.random([c_out], 0.05))
    pad = k // 2
    return g.op1(
        "Conv", f"/{scope}", [x, w, b],
        dilations=[1, 1], group=group, kernel_shape=[k, k],
        pads=[pad, pad, pad, pad], strides=[1, 1],
    )


def batch_norm(g: GraphBuilder, x: str, scope: str, channels: int) -> str:
    scale = g.param(f"{scope}.weight", g.uniform([channels], 0.8, 1.2))
    bias = g.param(f"{scope}.bias", g.random([channels], 0.1))
    mean = g.param(f"{scope}.running_mean", g.random([channels], 0.1))
    var = g.param(f"{scope}.running_var", g.uniform([channels], 0.5, 1.5))
    return g.op1(
        "BatchNormalization", f"/{scope}", [x, scale, bias, mean, var],
        epsilon=BN_EPS, momentum=0.9,
    )


def conv_bn_relu(
    g: GraphBuilder, x: str, scope: str, c_in: int, c_out: int, k: int, group: int = 1
) -> str:
    y = conv(g, x, f"{scope}.conv", c_in, c_out, k, group)
    y = batch_norm(g, y, f"{scope}.bn", c_out)
    return g.op1("Relu", f"/{scope}/act", [y])


def residual_block(g: GraphBuilder, x: str, scope: str, channels: int) -> str:
    y = conv_bn_relu(g, x, f"{scope}.conv1", channels, channels, 3)
    y = conv(g, y, f"{scope}.conv2.conv", channels, channels, 3)
    y = batch_norm(g, y, f"{scope}.conv2.bn", channels)
    y = g.op1("Add", f"/{scope}", [y, x])
    return g.op1("Relu", f"/{scope}/act", [y])


def depthwise_separable(g: GraphBuilder, x: str, scope: str, c_in: int, c_out: int) -> str:
    y = conv_bn_relu(g, x, f"{scope}.depthwise", c_in, c_in, 3, group=c_in)
    return conv_bn_relu(g, y, f"{scope}.pointwise", c_in, c_out, 1)


def flatten_spatial_to_tokens(g: GraphBuilder, x: str, scope: str) -> str:
    """``x.flatten(2).transpose(1, 2)`` with the exporter's runtime-shape Reshape.

    The two Unsqueeze ``axes`` initializers hold the same value: the duplicate.
    """
    s = f"/{scope}"
    shape = g.op1("Shape", s, [x])
    dims = []
    for i in range(2):
        index = g.constant("Gather", np.array(i, dtype=np.int64))
        d = g.op("Gather", f"{s}/dim{i}", [shape, index], axis=0)[0]
        axes = g.constant("Unsqueeze", np.array([0], dtype=np.int64))
        dims.append(g.op1("Unsqueeze", f"{s}/dim{i}", [d, axes]))
    minus_one = g.constant("Concat", np.array([-1], dtype=np.int64))
    target = g.op1("Concat", s, [*dims, minus_one], axis=0)
    flat = g.op1("Reshape", s, [x, target], allowzero=0)
    return g.op1("Transpose", s, [flat], perm=[0, 2, 1])


def linear(g: GraphBuilder, x: str, scope: str, d_in: int, d_out: int) -> str:
    # torch exports Linear on 3-D input as MatMul with the pre-transposed weight
    # stored as an anonymous initializer, plus an Add of the bias.  (On 2-D input,
    # as in the head, it would emit Gemm; MatMul+Add is kept there on purpose.)
    w = g.constant("MatMul", g.random([d_in, d_out], 1.0 / math.sqrt(d_in)))
    b = g.param(f"{scope}.bias", g.random([d_out], 0.05))
    s = f"/{scope}"
    y = g.op1("MatMul", s, [x, w])
    return g.op1("Add", s, [b, y])


def attention_scale_constant(g: GraphBuilder, scope: str, head_dim: int) -> str:
    value = numpy_helper.from_array(np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    return g.op1("Constant", f"/{scope}", [], value=value)


def self_attention(g: GraphBuilder, x: str, scope: str, dim: int) -> str:
    """Single-head attention; Dropout on the probabilities as in nn.MultiheadAttention."""
    s = f"/{scope}"
    q = linear(g, x, f"{scope}.q_proj", dim, dim)
    k = linear(g, x, f"{scope}.k_proj", dim, dim)
    v = linear(g, x, f"{scope}.v_proj", dim, dim)
    k_t = g.op1("Transpose", s, [k], perm=[0, 2, 1])
    scores = g.op1("MatMul", f"{s}/scores", [q, k_t])
    scores = g.op1("Mul", s, [scores, attention_scale_constant(g, scope, dim)])
    probs = g.op1("Softmax", s, [scores], axis=-1)
    probs = g.op1("Dropout", s, [probs])
    context = g.op1("MatMul", f"{s}/context", [probs, v])
    return linear(g, context, f"{scope}.out_proj", dim, dim)


def layer_norm(g: GraphBuilder, x: str, scope: str, dim: int) -> str:
    """LayerNorm over the last axis, spelled out op by op (a hand-written LayerNorm's export)."""
    s = f"/{scope}"
    mean = g.op1("ReduceMean", s, [x], axes=[-1], keepdims=1)
    centered = g.op1("Sub", s, [x, mean])
    sq = g.op1("Pow", s, [centered, g.constant("Pow", np.array(2.0, dtype=np.float32))])
    var = g.op1("ReduceMean", f"{s}/var", [sq], axes=[-1], keepdims=1)
    var = g.op1("Add", f"{s}/eps", [var, g.constant("Add", np.array(LN_EPS, dtype=np.float32))])
    std = g.op1("Sqrt", s, [var])
    normed = g.op1("Div", s, [centered, std])
    weight = g.param(f"{scope}.weight", g.uniform([dim], 0.8, 1.2))
    bias = g.param(f"{scope}.bias", g.random([dim], 0.1))
    y = g.op1("Mul", s, [normed, weight])
    return g.op1("Add", s, [y, bias])


def gelu_erf(g: GraphBuilder, x: str, scope: str) -> str:
    """x * 0.5 * (1 + erf(x / sqrt(2))), in the exporter's op order."""
    s = f"/{scope}"
    y = g.op1("Div", s, [x, g.constant("Div", np.array(math.sqrt(2.0), dtype=np.float32))])
    y = g.op1("Erf", s, [y])
    y = g.op1("Add", s, [y, g.constant("Add", np.array(1.0, dtype=np.float32))])
    y = g.op1("Mul", s, [x, y])
    return g.op1("Mul", f"{s}/half", [y, g.constant("Mul", np.array(0.5, dtype=np.float32))])


def transformer_block(g: GraphBuilder, tokens: str, scope: str, dim: int) -> str:
    attended = self_attention(g, tokens, f"{scope}.attn", dim)
    y = g.op1("Add", f"/{scope}/residual", [tokens, attended])
    return layer_norm(g, y, f"{scope}.norm", dim)


def classifier_head(g: GraphBuilder, tokens: str, scope: str, dim: int, hidden: int) -> str:
    pooled = g.op1("ReduceMean", f"/{scope}/pool", [tokens], axes=[1], keepdims=0)
    y = linear(g, pooled, f"{scope}.fc1", dim, hidden)
    y = gelu_erf(g, y, f"{scope}/act")
    return linear(g, y, f"{scope}.fc2", hidden, NUM_CLASSES)


def rename_output(g: GraphBuilder, old: str, new: str) -> None:
    for node in g.nodes:
        node.output[:] = [new if o == old else o for o in node.output]


def build_model() -> onnx.ModelProto:
    g = GraphBuilder(seed=0)
    x = conv_bn_relu(g, "image", "stem", 3, 16, 3)
    x = residual_block(g, x, "layer1", 16)
    x = depthwise_separable(g, x, "layer2", 16, 32)
    x = g.op1(
        "MaxPool", "/pool", [x],
        ceil_mode=0, kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2],
    )
    x = g.op1("Identity", "/pool", [x])
    tokens = flatten_spatial_to_tokens(g, x, "to_tokens")
    tokens = transformer_block(g, tokens, "encoder", 32)
    logits = classifier_head(g, tokens, "head", 32, 64)
    rename_output(g, logits, "logits")

    graph = helper.make_graph(
        g.nodes,
        "main_graph",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, IMAGE_SHAPE)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="graphopt-demo",
        producer_version="1.0",
        doc_string="Tiny CNN + self-attention image classifier (CIFAR-10 shaped), "
        "laid out like a TorchScript torch.onnx.export at opset 17; "
        "built by examples/demo/build_demo_model.py.",
    )
    helper.set_model_props(
        model,
        {"source": "examples/demo/build_demo_model.py", "weights": "np.random.default_rng(0)"},
    )
    return model


def check_single_duplicate_initializer(model: onnx.ModelProto) -> None:
    seen: dict[tuple, str] = {}
    duplicates = []
    for t in model.graph.initializer:
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in seen:
            duplicates.append((seen[key], t.name))
        seen[key] = t.name
    assert len(duplicates) == 1, duplicates


def run_in_onnxruntime(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(1).standard_normal(IMAGE_SHAPE).astype(np.float32)
    (logits,) = session.run(["logits"], {"image": image})
    assert logits.shape == (1, NUM_CLASSES), logits.shape
    assert np.isfinite(logits).all(), logits
    return logits


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    output = Path(args[0]) if args else OUTPUT_PATH
    model = build_model()
    onnx.checker.check_model(model, full_check=True)
    check_single_duplicate_initializer(model)
    run_in_onnxruntime(model)
    data = model.SerializeToString()
    output.write_bytes(data)
    print(f"wrote {output.name}: {len(model.graph.node)} nodes, {len(data)} bytes")


if __name__ == "__main__":
    main()
