"""What the factorize tests share: tiny models with chosen weights, and running them in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort

import graphopt

__all__ = ["single_layer", "run", "factorize", "op_counts", "matmul_sites"]


def single_layer(op: str, x_shape, weight: np.ndarray, bias: np.ndarray | None = None, opset: int = 17,
                 **attrs) -> onnx.ModelProto:
    """`y = op(x, W[, B])` with W (and B) as initializers; output shape left to inference."""
    inputs = ["x", "W"] + (["B"] if bias is not None else [])
    initializers = [onnx.numpy_helper.from_array(weight.astype(np.float32), "W")]
    if bias is not None:
        initializers.append(onnx.numpy_helper.from_array(bias.astype(np.float32), "B"))
    node = oh.make_node(op, inputs, ["y"], name="layer", **attrs)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)  # fills in the output's type and shape
    assert model.graph.output[0].type.tensor_type.HasField("shape")
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def factorize(model: onnx.ModelProto, calibration=None, **options) -> tuple[onnx.ModelProto, dict]:
    """(model after the pass, the pass's report entry), verification off so the test checks."""
    result = graphopt.optimize(model, passes=["factorize"], options={"factorize": options},
                               calibration=calibration, verify="off")
    return result.model, result.report["passes"][0]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def matmul_sites(weights: list[np.ndarray], rows: int = 4):
    """One MatMul site per weight (its own one-layer model), indexed 0, 1, …, with `rows` input rows,
    and each one's plain SVD fit: `(sites, fits)`."""
    from graphopt import convert
    from graphopt_plugins.factorize.lowrank import fit_svd
    from graphopt_plugins.factorize.sites import find_sites

    sites, fits = [], {}
    for index, weight in enumerate(weights):
        model = single_layer("MatMul", [rows, weight.shape[0]], weight)
        site = find_sites(convert.import_graph(model), "channel", {"MatMul"})[0][0]
        site.index, site.rows = index, rows
        sites.append(site)
        fits[index] = fit_svd(site.weight)
    return sites, fits
