"""graphopt.sparse_tensors: sparse initializers and Constant(sparse_value) reach the IR as dense
tensors (graphsurgeon drops them), so a pass sees the same weights onnxruntime runs."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt import convert, graph_queries
from graphopt.sparse_tensors import densify_sparse_tensors, sparse_to_dense


def _sparse(array: np.ndarray, name: str, linear: bool = True) -> onnx.SparseTensorProto:
    flat = np.flatnonzero(array)
    indices = flat if linear else np.stack(np.unravel_index(flat, array.shape), axis=1)
    return helper.make_sparse_tensor(numpy_helper.from_array(array.ravel()[flat], name),
                                     numpy_helper.from_array(indices.astype(np.int64), name + "_indices"), array.shape)


def _model(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("Constant", [], ["w1"], sparse_value=_sparse(w1, "w1")),
             helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    graph.sparse_initializer.append(_sparse(w2, "w2", linear=False))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_sparse_tensors_are_imported_dense_and_outputs_kept():
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    w1[w1 < 0.3], w2[w2 < 0.3] = 0, 0
    model = _model(w1, w2)
    np.testing.assert_array_equal(sparse_to_dense(model.graph.sparse_initializer[0]), w2)
    graph = convert.import_graph(model)
    values = {name: graph_queries.constant_value(tensor) for name, tensor in graph.tensors().items()}
    np.testing.assert_array_equal(values["w2"], w2)
    constant = next(node for node in graph.nodes if node.op == "Constant")
    np.testing.assert_array_equal(constant.attrs["value"].values, w1)
    exported = convert.export_model(graph, model)
    onnx.checker.check_model(exported, full_check=True)
    x = rng.normal(size=(2, 6)).astype(np.float32)
    for candidate in (model, exported):
        session = ort.InferenceSession(candidate.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ w1 @ w2, rtol=1e-5, atol=1e-5)


def test_model_without_sparse_tensors_is_not_copied():
    model = helper.make_model(helper.make_graph([], "g", [], []))
    assert densify_sparse_tensors(model) is model
