"""A weight several If bodies read is stored once, and `cleanup,fuse` never grows such a model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
import trait_models
from graphopt.proto_walk import iter_graph_protos
from graphopt.subgraph_weights import hoist_shared_body_weights


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _holders(model, name):
    return [graph.name for graph in iter_graph_protos(model.graph) if any(t.name == name for t in graph.initializer)]


@pytest.mark.parametrize("passes", [["cleanup"], ["cleanup", "fuse"]])
def test_if_bodies_sharing_a_weight_do_not_grow_the_model(passes):
    model = trait_models.if_with_weights()
    result = graphopt.optimize(model, passes=passes, input_shapes={"x": (2, 64)})
    assert result.report["passes"][0]["changed"]  # the Identity went: the model was exported again
    assert result.model.ByteSize() <= model.ByteSize()
    assert _holders(result.model, "shared_w") == ["if_with_weights"]
    onnx.checker.check_model(result.model, full_check=True)
    for flag in (True, False):
        feeds = trait_models.if_feeds(flag=flag)
        np.testing.assert_allclose(_run(result.model, feeds), _run(model, feeds), rtol=1e-5, atol=1e-5)


def test_hoisting_moves_only_weights_two_bodies_hold():
    model = trait_models.if_with_weights()
    bodies = list(iter_graph_protos(model.graph))[1:]
    shared = next(t for t in model.graph.initializer if t.name == "shared_w")
    for body in bodies:  # what graphsurgeon's export writes: a copy in each body that reads it
        body.initializer.append(shared)
    del model.graph.initializer[[t.name for t in model.graph.initializer].index("shared_w")]
    assert hoist_shared_body_weights(model) == 1
    assert _holders(model, "shared_w") == ["if_with_weights"]
    assert _holders(model, "then_w") == ["then"] and _holders(model, "else_w") == ["else"]
    onnx.checker.check_model(model, full_check=True)
    assert hoist_shared_body_weights(model) == 0
