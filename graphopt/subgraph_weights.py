"""One copy of a weight that several If/Loop/Scan bodies read.

onnx-graphsurgeon exports a constant that only nested graphs read as an initializer of each
body that reads it, so a weight both branches of an If use is written twice (a scripted
model with `then: a(x)`, `else: tanh(a(x)) + b(x)` grew from 0.53 to 0.79 MB on a no-op
`cleanup`). A body may read any tensor of an enclosing graph, so one copy in the main graph
serves them all.
"""

from __future__ import annotations

from collections import Counter

import onnx

from graphopt.proto_walk import iter_graph_protos

__all__ = ["hoist_shared_body_weights"]


def hoist_shared_body_weights(model: onnx.ModelProto) -> int:
    """Moves initializers held by two or more nested bodies (names are unique across a model's
    graphs: the same weight) into the main graph, once; returns how many."""
    bodies = list(iter_graph_protos(model.graph))[1:]
    held = Counter(tensor.name for body in bodies for tensor in body.initializer)
    shared = {name for name, count in held.items() if count > 1}
    if not shared:
        return 0
    present = {tensor.name for tensor in model.graph.initializer}
    for body in bodies:
        kept = []
        for tensor in body.initializer:
            if tensor.name not in shared:
                kept.append(tensor)
            elif tensor.name not in present:
                present.add(tensor.name)
                model.graph.initializer.append(tensor)
        if len(kept) != len(body.initializer):
            del body.initializer[:]
            body.initializer.extend(kept)
    return len(shared)
