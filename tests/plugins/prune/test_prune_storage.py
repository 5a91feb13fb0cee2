"""`storage=sparse` (graphopt_plugins/prune/unstructured.py `_store`): pruned weights written as
Constant(sparse_value) where that is smaller; the file shrinks, onnxruntime loads it with the same
outputs as dense storage, and later passes (which see it dense) and a second run keep it valid."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphopt
from prune_support import build, prune, run


def _mlp():
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("MatMul", ["h", "w1"], ["a"], name="up"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    return build(nodes, {"h": [1, 8, 64]}, ["y"], {"w1": rng.normal(0, 0.5, (64, 128)).astype(np.float32),
                                                   "w2": rng.normal(0, 0.5, (128, 64)).astype(np.float32)})


def _sparse_constants(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].name == "sparse_value"]


def test_sparse_storage_shrinks_the_file_and_runs_like_dense():
    model = _mlp()
    dense, dense_details = prune(model, sparsity=0.85, reconstruct="false")
    stored, details = prune(model, sparsity=0.85, reconstruct="false", storage="sparse")
    assert details["layers_stored_sparse"] == 2 and len(_sparse_constants(stored)) == 2
    assert details["stored_bytes"] < 0.5 * details["dense_bytes"] == 0.5 * dense_details["stored_bytes"]
    assert stored.ByteSize() < 0.6 * dense.ByteSize()
    feeds = {"h": np.random.default_rng(2).normal(size=(1, 8, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run(stored, feeds)[0], run(dense, feeds)[0])
    again, again_details = prune(stored, sparsity=0.85, reconstruct="false", storage="sparse")
    assert not again_details["changed"] and again.SerializeToString() == stored.SerializeToString()
    # a later pipeline sees the weights dense (graphsurgeon drops sparse attributes) and keeps outputs
    after = graphopt.optimize(stored, passes=["cleanup"], inputs={"h": feeds["h"][None]}, verify="each")
    assert after.report["passes"][0]["status"] in ("accepted", "unchanged")
    onnx.checker.check_model(after.model, full_check=True)
    np.testing.assert_allclose(run(after.model, feeds)[0], run(dense, feeds)[0], rtol=1e-5, atol=1e-5)


def test_sparse_storage_stays_dense_where_sparse_is_bigger():
    stored, details = prune(_mlp(), sparsity=0.5, reconstruct="false", storage="sparse")
    assert details["layers_stored_sparse"] == 0 and not _sparse_constants(stored)
    assert details["stored_bytes"] == details["dense_bytes"]


def test_sparse_storage_is_refused_for_channels():
    with pytest.raises(graphopt.UsageError):
        graphopt.optimize(_mlp(), passes=["prune"], options={"prune": {"structured": "channels", "storage": "sparse"}}, verify="off")
