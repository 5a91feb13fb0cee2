"""A model cut into consecutive pieces, each handing the tensors later pieces read to them.

`tflite_mixed` converts each piece to LiteRT on its own, float32 or int8. A cut is a place in
the node order where at most `width` tensors computed from the model's inputs are still needed
afterwards (tensors computed from weights alone, such as shapes, are recomputed by the piece
that reads them), each float32, int64 or int32 with a static shape whose layout its shape tells (not `(1, C, H, W)`
with `C == H == W`, see `_layout_ambiguous`). A model with If/Loop/Scan nodes has none. Each piece is extracted with
`onnx.utils.Extractor`; the tensors between pieces are renamed `cut<n>` inside them (onnx2tf
rewrites names with '/'), and an output a piece also reads itself is written by a `Mul(x, 1)`
of its own (see `_outputs_of_their_own`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

__all__ = ["Piece", "cuts", "cut_into_pieces", "piece_feeds"]

# the tensor types a piece hands to the next (an int64 attention mask passes through every layer)
_PASSED = (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32)


@dataclasses.dataclass
class Piece:
    model: onnx.ModelProto
    inputs: list[str]  # the piece model's names: the model's own for its inputs and outputs, `cut<n>` within
    outputs: list[str]
    first_node: int  # index in the whole model's node order
    nodes: int
    originals: dict[str, str]  # the piece model's input and output names -> the whole model's


def cuts(model: onnx.ModelProto, width: int = 4) -> dict[int, list[str]]:
    """{node index k: the tensors nodes[:k] hand to nodes[k:]} where they are at most `width`, of `_PASSED` types and static."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return {}
    inferred = onnx.shape_inference.infer_shapes(model)
    static = {v.name for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
              if v.type.tensor_type.elem_type in _PASSED and len(v.type.tensor_type.shape.dim) >= 1
              and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
              and not _layout_ambiguous([d.dim_value for d in v.type.tensor_type.shape.dim])}
    count = len(graph.node)
    dynamic = {v.name for v in graph.input} - {t.name for t in graph.initializer}
    last_use = {}
    for index, node in enumerate(graph.node):
        if any(name in dynamic for name in node.input):
            dynamic.update(name for name in node.output if name)
        for name in node.input:
            last_use[name] = index
    for value in graph.output:
        last_use[value.name] = count
    live = {name for name in (v.name for v in graph.input) if name in dynamic and name in last_use}
    found = {}
    for index, node in enumerate(graph.node):
        if index and len(live) <= width and live <= static:
            found[index] = sorted(live)
        live = {name for name in live if last_use.get(name, -1) > index}
        live.update(name for name in node.output if name in dynamic and last_use.get(name, -1) > index)
    return found


def _layout_ambiguous(shape: list[int]) -> bool:
    """Whether channels first and channels last give the same shape ((1, 16, 16, 16), (1, 40, 40)).

    A piece's flatbuffer may take or hand over such a tensor either way, and graphopt, which reads
    the layout from the shape (`tflite._to_shape`), would feed it, calibrate it and read it back
    untransposed: a piece ending in the torch CNN's (1, 16, 16, 16) stem output computed cosine
    0.008 against onnxruntime alone, and its calibration ranges were taken on scrambled inputs.
    """
    return len(shape) >= 3 and shape[1:] == [*shape[2:], shape[1]]


def cut_into_pieces(model: onnx.ModelProto, at: list[int]) -> list[Piece]:
    """`model` cut before each node index of `at` (keys of `cuts`), as extracted sub-models in order.

    A piece's inputs are the tensors computed from the model's inputs that its nodes read and no
    node of it computes (a model input, or an earlier piece's output); its outputs are the tensors
    it computes that a later piece reads or the model outputs. Inputs and outputs keep the order
    of their first appearance, which onnx2tf keeps as well.
    """
    graph = model.graph
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))  # it takes shapes from value_info
    dynamic = {v.name for v in graph.input} - {t.name for t in graph.initializer}
    for node in graph.node:
        if any(name in dynamic for name in node.input):
            dynamic.update(name for name in node.output if name)
    bounds = [0, *sorted(at), len(graph.node)]
    spans = [graph.node[start:stop] for start, stop in zip(bounds, bounds[1:])]
    model_outputs = [v.name for v in graph.output]
    kept = {v.name for v in graph.input} | set(model_outputs)
    safe: dict[str, str] = {}  # onnx2tf rewrites names with '/' and ':'; inner cut tensors get plain ones
    pieces = []
    for number, (start, nodes) in enumerate(zip(bounds, spans)):
        made = {name for node in nodes for name in node.output}
        inputs = list(dict.fromkeys(name for node in nodes for name in node.input if name in dynamic and name not in made))
        later = {name for rest in spans[number + 1:] for node in rest for name in node.input}
        outputs = list(dict.fromkeys(name for node in nodes for name in node.output if name in later or name in model_outputs))
        sub = extractor.extract_model(inputs, outputs)
        sub.ir_version = model.ir_version
        del sub.graph.value_info[:]  # onnx2tf infers its own
        _outputs_of_their_own(sub)
        for name in inputs + outputs:
            if name not in kept:
                safe.setdefault(name, f"cut{len(safe)}")
        _rename(sub, safe)
        pieces.append(Piece(sub, [safe.get(n, n) for n in inputs], [safe.get(n, n) for n in outputs], start, len(nodes),
                            {safe.get(n, n): n for n in inputs + outputs}))
    return pieces


def _rename(model: onnx.ModelProto, names: dict[str, str]) -> None:
    for value in [*model.graph.input, *model.graph.output]:
        value.name = names.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]


def _outputs_of_their_own(model: onnx.ModelProto) -> None:
    """Each output the piece also reads itself written by a `Mul(x, 1)` of its own: onnx2tf 2.6.9
    writes such an output channels first with no op computing it (LiteRT: "Tensor data is null"),
    and elides an Identity."""
    read = {name for node in model.graph.node for name in node.input}
    for value in model.graph.output:
        if value.name in read:
            inner = value.name + "__inner"
            for node in model.graph.node:
                for i, name in enumerate(node.output):
                    if name == value.name:
                        node.output[i] = inner
                for i, name in enumerate(node.input):
                    if name == value.name:
                        node.input[i] = inner
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.0, np.float32), inner + "_one"))
            model.graph.node.append(onnx.helper.make_node("Mul", [inner, inner + "_one"], [value.name], name=inner + "_copy"))


def piece_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The named tensors of `model` on `feeds` (`{input: (N, *shape)}`), run in onnxruntime, as `{name: (N, *shape)}`."""
    from graphopt.verify.runner import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {v.name for v in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.add().name = name
    session = make_session(probe)
    count = len(next(iter(feeds.values())))
    runs = [session.run(names, {k: np.asarray(v[i]) for k, v in feeds.items()}) for i in range(count)]
    return {name: np.stack([run[j] for run in runs]) for j, name in enumerate(names)}
