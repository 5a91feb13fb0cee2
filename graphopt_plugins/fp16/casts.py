"""Cast→Cast chains folded into one Cast (or none), at every graph level.

`Cast(Cast(x, to=float), to=float16)` reads `x` directly with `to=float16`: exact when `x` is
float16 (widening is exact), one rounding instead of two otherwise. A chain that comes back to
`x`'s own type through an exact widening (float16 → float → float16) is dropped altogether.
Never folded: a narrowing first step (float → float16 → float loses bits on purpose).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt.graph_queries import iter_graphs

__all__ = ["fold_cast_chains"]

_FLOAT, _HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def fold_cast_chains(graph: gs.Graph) -> int:
    """Folds the chains in `graph` and its bodies; returns how many Casts were bypassed."""
    folded = 0
    for owner in iter_graphs(graph, functions=False):
        outputs = graph_queries.graph_output_ids(owner)
        for second in list(owner.nodes):
            first = graph_queries.producer(second.inputs[0]) if second.op == "Cast" and second.inputs else None
            if first is None or first.op != "Cast" or not first.inputs:
                continue
            source = first.inputs[0]
            source_type = _onnx_type(source)
            exact_widening = source_type == _HALF and first.attrs.get("to") == _FLOAT
            then_half = first.attrs.get("to") == _FLOAT and second.attrs.get("to") == _HALF
            if not (exact_widening or then_half):
                continue
            if second.attrs.get("to") == source_type and exact_widening and id(second.outputs[0]) not in outputs:
                graph_queries.replace_all_uses(second.outputs[0], source)
            else:
                second.inputs[0] = source
            folded += 1
    return folded


def _onnx_type(tensor: gs.Tensor) -> int | None:
    if tensor.dtype is None:
        return None
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    except (TypeError, KeyError, ValueError):
        return None
