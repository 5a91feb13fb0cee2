"""A Reshape whose target is assembled from its own input's Shape gets a constant target (0 = copy the dim)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries, tensor_shapes
from graphopt.tensor_shapes import node_positions, propagate_shapes
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["constant_reshape_targets"]

RULE = "reshape_own_dims"
_INT_TYPES = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)


def constant_reshape_targets(graph: gs.Graph, ctx: FuseContext) -> int:
    """Rewrites `Reshape(x, Concat(Shape(x)[i:j], c, …))` as `Reshape(x, [0, …, 0, c, …])`.

    Exporters (paddle2onnx, TorchScript's `x.view(x.size(0), -1)`) compute a target shape at
    run time from the input's own dimensions. A piece that copies input dims `i..j-1` into the
    same positions `i..j-1` of the target is what a 0 means in a Reshape target (with the
    default `allowzero=0`), so the whole target becomes a constant and the Shape/Slice/Gather/
    Cast/Concat chain feeding it dies. A piece read from another tensor's Shape qualifies when
    those dims are static (their values are used) or are the same symbolic dims as the
    input's at the same positions (inferred shapes: one name, one size). Pieces may be constants, `Slice(Shape(x))`,
    `Shape(x)` with start/end, `Gather(Shape(x), i)` (1-D index, or scalar under an
    Unsqueeze), each possibly through integer Casts.

    Does not fire when: `allowzero=1`; a piece reads the shape of another tensor, or moves a
    dim to another position; a piece is computed in any other way. (A 0 already in a constant
    piece keeps its meaning, since every piece keeps its position.)
    """
    rewritten = []
    position = node_positions(graph)
    for reshape in list(graph.nodes):
        if reshape.op != "Reshape" or len(reshape.inputs) != 2 or int(reshape.attrs.get("allowzero", 0)):
            continue
        target = reshape.inputs[1]
        if graph_queries.constant_value(target) is not None or graph_queries.producer(target) is None:
            continue
        pieces = _pieces(target)
        if pieces is None:
            continue
        values: list[int] = []
        for piece in pieces:
            part = _piece_values(piece, reshape.inputs[0], len(values))
            if part is None:
                values = None
                break
            values.extend(part)
        if values is None:
            ctx.near_miss(RULE, reshape, "a piece of the target is not a constant or a copy of the input's own dims")
            continue
        reshape.inputs[1] = ctx.constant(f"{reshape.name or 'reshape'}_shape", np.asarray(values, dtype=np.int64))
        # A constant target lets shape inference see through the Reshape: what follows gets
        # shapes, and the next Reshape downstream (attention's split, then merge) its target.
        propagate_shapes(graph, [reshape.inputs[1]], position)
        rewritten.append(reshape)
    if rewritten:
        graph_queries.remove_dead_nodes_in_level(graph)  # the Shape chains that built the old targets: gone, they read nothing
        if _shape_read_downstream(rewritten, position):
            # What only a whole-graph inference finds (through Shape arithmetic) the next round
            # and the other rules must see too, or a second run of the pass would find more to do.
            tensor_shapes.refresh_shapes(graph)
    return len(rewritten)


def _shape_read_downstream(nodes: list[gs.Node], position: dict[int, int]) -> bool:
    """Whether a Shape or Size node, a node with a body, or one of a body (not in `position`,
    the level's nodes) reads anything downstream of `nodes`.

    Only there does a whole-graph inference learn more than `propagate_shapes` did: data
    propagation turns shapes into values only through Shape and Size, and bodies are not
    propagated into. Without one (a classifier's final flatten) the export and inference of
    the whole graph would find nothing new.
    """
    seen: set[int] = set()
    pending = list(nodes)
    while pending:
        node = pending.pop()
        for tensor in node.outputs:
            for consumer in tensor.outputs:
                if id(consumer) in seen:
                    continue
                if (consumer.op in ("Shape", "Size") or id(consumer) not in position
                        or (consumer.attrs and graph_queries.node_subgraphs(consumer))):
                    return True
                seen.add(id(consumer))
                pending.append(consumer)
    return False


def _strip_casts(tensor: gs.Tensor) -> gs.Tensor:
    node = graph_queries.producer(tensor)
    while node is not None and node.op == "Cast" and int(node.attrs.get("to", 0)) in _INT_TYPES:
        tensor = node.inputs[0]
        node = graph_queries.producer(tensor)
    return tensor


def _pieces(target: gs.Tensor) -> list[gs.Tensor] | None:
    tensor = _strip_casts(target)
    node = graph_queries.producer(tensor)
    if node is not None and node.op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1):
        return list(node.inputs)
    return [tensor]


def _piece_values(piece: gs.Tensor, x: gs.Tensor, position: int) -> list[int] | None:
    """The piece as target values (0 where it copies x's dim at the same position), or None."""
    constant = graph_queries.constant_value(_strip_casts(piece))
    if constant is not None:
        values = [int(v) for v in np.asarray(constant).reshape(-1)]
        return values  # a 0 keeps its meaning: the piece stays at its position
    node = graph_queries.producer(_strip_casts(piece))
    if node is None:
        return None
    if node.op == "Unsqueeze":  # a scalar Gather made 1-D
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            axes = graph_queries.constant_value(node.inputs[1])
        if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] not in ([0], [-1]):
            return None
        node = graph_queries.producer(_strip_casts(node.inputs[0]))
        if node is None or node.op != "Gather":
            return None
    start, stop, source = _copied_dims(node)
    if start is None:
        return None
    if source is x and start == position:
        return [0] * (stop - start)
    dims = list(source.shape[start:stop]) if source.shape is not None and len(source.shape) >= stop else None
    if dims is not None and all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
        return [int(d) for d in dims]  # another tensor's static dims: their values
    own = list(x.shape[position:position + stop - start]) if x.shape is not None else None
    if start == position and dims is not None and own == dims and all(isinstance(d, str) and d for d in dims):
        return [0] * (stop - start)  # the same symbolic dims at the same positions: equal by definition
    return None


def _copied_dims(node: gs.Node) -> tuple[int | None, int | None, gs.Tensor | None]:
    """(first, past-last, y) when `node` yields dims of some tensor y read from `Shape(y)`; Nones if not."""
    if node.op == "Shape":
        return (*_bounds(node.attrs.get("start", 0), node.attrs.get("end"), node.inputs[0]), node.inputs[0])
    source = graph_queries.producer(_strip_casts(node.inputs[0])) if node.inputs else None
    if source is None or source.op != "Shape" or "start" in source.attrs or "end" in source.attrs:
        return None, None, None
    x = source.inputs[0]
    return (*_copied_from_shape(node, x), x)


def _copied_from_shape(node: gs.Node, x: gs.Tensor) -> tuple[int | None, int | None]:
    if node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        index = graph_queries.constant_value(node.inputs[1])
        if index is None or np.asarray(index).size != 1:
            return None, None
        first, _ = _bounds(int(np.asarray(index).reshape(-1)[0]), None, x)
        return (first, first + 1) if first is not None else (None, None)
    if node.op == "Slice" and "starts" not in node.attrs and len(node.inputs) >= 3:
        starts, ends = graph_queries.constant_value(node.inputs[1]), graph_queries.constant_value(node.inputs[2])
        extra = [graph_queries.constant_value(t) if t.name else None for t in node.inputs[3:5]]
        if starts is None or ends is None or np.asarray(starts).size != 1:
            return None, None
        if len(node.inputs) > 3 and node.inputs[3].name and (extra[0] is None or int(np.asarray(extra[0]).reshape(-1)[0]) != 0):
            return None, None
        if len(node.inputs) > 4 and node.inputs[4].name and (extra[1] is None or int(np.asarray(extra[1]).reshape(-1)[0]) != 1):
            return None, None
        return _bounds(int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0]), x)
    return None, None


def _bounds(start: int, end: int | None, x: gs.Tensor) -> tuple[int | None, int | None]:
    rank = len(x.shape) if x.shape is not None else None
    if start < 0 or end is None or end < 0 or (rank is not None and end > rank):
        if rank is None:
            return None, None
        start = start + rank if start < 0 else start
        end = rank if end is None else (end + rank if end < 0 else min(end, rank))
    if start < 0 or end <= start:
        return None, None
    return start, end
