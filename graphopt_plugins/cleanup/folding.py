"""Constant folding: one sweep per graph level, numpy for the cheap ops, onnxruntime for the rest.

Replaces graphsurgeon's `Graph.fold_constants`, which copied the whole graph and built an
onnxruntime session with every optimization on over every foldable tensor: most of cleanup's
time on a 100k-node graph, and a third of a PP-OCR compile.

In each graph level, in topological order, a node folds when
- every input is a constant (or an omitted optional input, or a value folded earlier in the sweep);
- its value is a function of its inputs (never the Random* ops, Multinomial, Bernoulli), it is
  not a Quantize/DequantizeLinear (a quantized weight stays quantized for onnxruntime), it has
  no body, its attributes are not references to a function's attributes, and its op is in the
  default domain;
- the constant it becomes does not grow the model by more than `growth_limit` bytes over the
  constants it reads. For ops that can multiply their input (Expand, Tile, ConstantOfShape,
  Range, Pad, Resize, OneHot, EyeLike…) the output size is computed *before* evaluating, so a
  refused fold never materialises the big tensor; for the rest it is checked on the result.

The cheap ops (`fold_numpy`) are evaluated right away, so a folded chain of shape arithmetic
costs no session at all; the others of the level go to one onnxruntime session, optimizations
off, holding only those nodes (`fold_onnxruntime`). `Shape` of a tensor whose dims are static
comes first (`fold_shapes`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt_plugins.cleanup.fold_numpy import evaluate_with_numpy
from graphopt_plugins.cleanup.fold_onnxruntime import evaluate_with_onnxruntime
from graphopt_plugins.cleanup.fold_shapes import fold_static_shapes, make_constant

__all__ = ["fold_constants", "decides_by_unknown_shapes", "NONDETERMINISTIC", "QUANTIZATION", "GROWTH_PRONE"]

logger = logging.getLogger(__name__)

# Never folded: their value is not a function of their inputs.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"})
# Never folded: a quantized weight stays quantized. onnxruntime fuses DequantizeLinear(int8 W)
# into QLinearConv/QGemm/MatMulIntegerToFloat; folding it stores W as float (4x the bytes)
# and leaves a float kernel between a Quantize/Dequantize pair.
QUANTIZATION = frozenset({"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"})
# Ops whose output can be much bigger than their inputs: sized before they are evaluated.
GROWTH_PRONE = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot", "EyeLike"})


def fold_constants(graph: gs.Graph, growth_limit: int) -> int:
    """Folds every constant-foldable node of `graph` (bodies and functions too); returns nodes folded."""
    before = _node_count(graph)
    graph_queries.toposort(graph)
    folded = fold_static_shapes(graph)
    root_opsets = _opsets(graph)
    for owner in graph_queries.iter_graphs(graph):
        opsets = _opsets(owner) if isinstance(owner, gs.Function) else root_opsets
        folded += _fold_level(owner, growth_limit, opsets)
    if not folded:
        return 0
    graph_queries.remove_dead_nodes(graph)
    return max(before - _node_count(graph), 0)


def decides_by_unknown_shapes(graph: gs.Graph) -> bool:
    """Whether a folding decision waits on a shape not yet inferred: a `Shape` of a tensor whose
    shape is missing or has an unnamed unknown dim, or a constant-input growth-prone node whose
    output size neither its inputs nor inference give. A named dynamic dim (`batch`) stays
    unknown however often one infers."""
    for _, node in graph_queries.iter_nodes(graph):
        if node.op == "Shape" and node.inputs and _not_yet_inferred(node.inputs[0].shape):
            return True
        if node.op in GROWTH_PRONE and _reads_only_constants(node) and _output_count_before_evaluating(node) is None:
            return True
    return False


def _fold_level(owner: gs.Graph, growth_limit: int, opsets: list[onnx.OperatorSetIdProto]) -> int:
    """Folds one graph level in one sweep plus at most one onnxruntime session; returns tensors folded."""
    folded = 0
    deferred: list[gs.Node] = []  # for onnxruntime, in topological order
    deferred_counts: dict[int, int] = {}  # id(tensor) -> its element count, estimated
    for node in owner.nodes:
        if not _may_fold(node):
            continue
        waits = any(id(t) in deferred_counts for t in node.inputs)
        if not all(isinstance(t, gs.Constant) or not t.name or id(t) in deferred_counts for t in node.inputs):
            continue
        values = None
        if not waits:
            if node.op in GROWTH_PRONE and not _fits_before_evaluating(node, growth_limit):
                continue
            inputs = _numpy_inputs(node)
            values = None if inputs is None else evaluate_with_numpy(node, inputs)
        if values is not None and len(values) == len(node.outputs):
            folded += _replace_by_constants(node, values, growth_limit)
            continue
        estimate = _estimated_count(node, deferred_counts)
        if estimate is None:
            continue
        deferred.append(node)
        deferred_counts.update((id(t), estimate) for t in node.outputs)
    if deferred:
        results = evaluate_with_onnxruntime(deferred, opsets)
        for node in deferred:
            values = [results.get(id(t)) for t in node.outputs]
            if all(value is not None and value.dtype.kind in "biuf" for value in values):
                folded += _replace_by_constants(node, values, growth_limit)
    return folded


def _may_fold(node: gs.Node) -> bool:
    if not node.outputs or (node.domain or "") not in ("", "ai.onnx"):
        return False
    if node.op in NONDETERMINISTIC:
        logger.debug("not folding %s (%s): its value is random", node.name, node.op)
        return False
    if node.op in QUANTIZATION or _widens_a_stored_weight(node):
        logger.debug("not folding %s (%s): a quantized weight stays quantized", node.name, node.op)
        return False
    if node.attrs and (graph_queries.node_subgraphs(node) or any(isinstance(value, gs.Node.AttributeRef) for value in node.attrs.values())):
        return False  # a body is not folded; a function's attribute reference has no value here
    return True


def _widens_a_stored_weight(node: gs.Node) -> bool:
    """A Cast of an 8-bit integer constant to a float: a weight stored int8 and restored at load
    (quantize's folded form); folded here it would be stored at 2-4x the bytes again."""
    source = node.inputs[0] if node.op == "Cast" and node.inputs else None
    return (isinstance(source, gs.Constant) and np.dtype(source.dtype) in (np.dtype(np.int8), np.dtype(np.uint8))
            and int(node.attrs.get("to", 0)) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE))


def _reads_only_constants(node: gs.Node) -> bool:
    return all(isinstance(tensor, gs.Constant) or not tensor.name for tensor in node.inputs)


def _numpy_inputs(node: gs.Node) -> list[np.ndarray | None] | None:
    """The input values for numpy (None for an omitted input), or None if one is stored in a type
    numpy lacks (bfloat16 held as float32, say): onnxruntime evaluates such a node."""
    values = []
    for tensor in node.inputs:
        if not tensor.name:
            values.append(None)
            continue
        export = tensor.export_dtype
        if export is not None and (not _numpy_dtype(export) or np.dtype(export) != tensor.values.dtype):
            return None
        values.append(tensor.values)
    return values


def _numpy_dtype(dtype) -> bool:
    try:
        np.dtype(dtype)
        return dtype is not None
    except TypeError:
        return False


def _replace_by_constants(node: gs.Node, values: list[np.ndarray], growth_limit: int) -> int:
    """Makes the node's outputs constants unless that grows the model too much; returns how many."""
    for tensor, value in zip(node.outputs, values):
        # A type numpy lacks (bfloat16, float8) comes back from the runtime as something else.
        if tensor.dtype is not None and (not _numpy_dtype(tensor.dtype) or np.dtype(tensor.dtype) != value.dtype):
            logger.debug("not folding %s (%s): %s is %s, the value %s", node.name, node.op, tensor.name, tensor.dtype, value.dtype)
            return 0
    grown = sum(value.nbytes for value in values) - _constant_bytes(node)
    # A Constant node's value is in the model already: as an initializer it grows nothing.
    if grown > growth_limit and node.op != "Constant":
        logger.debug("not folding %s (%s): it would grow the model by %d bytes", node.name, node.op, grown)
        return 0
    for tensor, value in zip(list(node.outputs), values):
        make_constant(tensor, value)
    node.inputs.clear()
    node.outputs.clear()
    return len(values)


def _constant_bytes(node: gs.Node) -> int:
    return sum(tensor.values.nbytes for tensor in node.inputs if isinstance(tensor, gs.Constant))


def _fits_before_evaluating(node: gs.Node, growth_limit: int) -> bool:
    count = _output_count_before_evaluating(node)
    if count is None:
        logger.debug("not folding %s (%s): its output size is unknown", node.name, node.op)
        return False
    itemsize = max((np.dtype(t.dtype).itemsize for t in node.outputs if _numpy_dtype(t.dtype)), default=8)
    if count * itemsize - _constant_bytes(node) > growth_limit:
        logger.debug("not folding %s (%s): it would grow the model by %d bytes", node.name, node.op, count * itemsize - _constant_bytes(node))
        return False
    return True


def _estimated_count(node: gs.Node, deferred_counts: dict[int, int]) -> int | None:
    """Output elements of a node left to onnxruntime, from inference, or else from its inputs; None
    for a growth-prone op reading a value not yet computed (it folds next round, sized then)."""
    shape = node.outputs[0].shape
    if tensor_shapes.is_static_shape(shape):
        return math.prod(int(d) for d in shape)
    if node.op in GROWTH_PRONE:
        return None if any(id(t) in deferred_counts for t in node.inputs) else _output_count_before_evaluating(node)
    counts = [deferred_counts.get(id(t), t.values.size if isinstance(t, gs.Constant) else 0) for t in node.inputs if t.name]
    return max(counts, default=1)


def _output_count_before_evaluating(node: gs.Node) -> int | None:
    """Output element count of a growth-prone op: inferred, or computed from its constant inputs."""
    shape = node.outputs[0].shape
    if tensor_shapes.is_static_shape(shape):
        return math.prod(int(d) for d in shape)
    values = [graph_queries.constant_value(tensor) if tensor.name else None for tensor in node.inputs]
    try:
        if node.op == "ConstantOfShape" and values and values[0] is not None:
            return math.prod(int(d) for d in values[0].ravel())
        if node.op == "Expand" and len(values) == 2 and None not in values:
            return math.prod(np.broadcast_shapes(values[0].shape, tuple(int(d) for d in values[1].ravel())))
        if node.op == "Tile" and len(values) == 2 and None not in values:
            return values[0].size * math.prod(int(d) for d in values[1].ravel())
        if node.op == "Range" and len(values) == 3 and None not in values:
            start, limit, delta = (float(v) for v in values)
            return max(math.ceil((limit - start) / delta), 0)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None
    return None


def _not_yet_inferred(shape) -> bool:
    return shape is None or any(d is None for d in shape)


def _opsets(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    domains = getattr(graph, "import_domains", None)
    if domains:
        return list(domains)
    return [onnx.helper.make_opsetid("", graph.opset)]


def _node_count(graph: gs.Graph) -> int:
    return sum(len(owner.nodes) for owner in graph_queries.iter_graphs(graph))
