"""What the prune tests share: tiny graphs built from numpy weights, running and comparing them.

The structured cases use *dead* channels: the channels a test expects to be pruned get tiny root
weights (so the l2 ranking picks them) and zero weights in every layer that reads them (so they
contribute nothing). Pruning the right channels then leaves the outputs equal within the
lossless tolerance; pruning any other channel, or mapping offsets wrongly, does not.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.verify.metrics import output_metrics, tolerance_for

__all__ = ["build", "run", "prune", "weight", "feeds_for", "assert_close", "cosine", "initializer_shapes", "DEAD"]

DEAD = (1, 3)  # the channels every structured case makes dead
_RNG = np.random.default_rng(1234)


def weight(*shape, dead_rows=(), dead_cols=(), axis_cols=1) -> np.ndarray:
    """Normal weights; rows in `dead_rows` (axis 0) scaled to 1e-3, columns in `dead_cols` zeroed."""
    value = _RNG.normal(0, 0.5, shape).astype(np.float32)
    for row in dead_rows:
        value[row] *= 1e-3
    for col in dead_cols:
        np.moveaxis(value, axis_cols, 0)[col] = 0.0
    return value


def build(nodes, inputs: dict, outputs: list[str], initializers: dict, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "prune_case",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds_for(model: onnx.ModelProto, count: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` samples per input, stacked (N, *shape) — the calibration form; count=1 squeezes for running."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.uniform(-2, 2, [count] + shape).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def prune(model: onnx.ModelProto, calibration=None, **options) -> tuple[onnx.ModelProto, dict]:
    """(pruned model, the pass's details) with verification off: the test does the checking."""
    result = graphopt.optimize(model, passes=["prune"], options={"prune": options}, calibration=calibration, verify="off")
    entry = result.report["passes"][0]
    onnx.checker.check_model(result.model, full_check=True)
    return result.model, dict(entry.get("details", {}), changed=entry["changed"])


def assert_close(reference: onnx.ModelProto, candidate: onnx.ModelProto, samples: int = 3) -> None:
    """Outputs equal within the verifier's lossless float32 tolerance on a few random inputs."""
    tolerance = tolerance_for(np.float32)
    for seed in range(samples):
        feeds = {name: value[0] for name, value in feeds_for(reference, 1, seed).items()}
        for expected, actual in zip(run(reference, feeds), run(candidate, feeds)):
            np.testing.assert_allclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol)


def cosine(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict) -> float:
    """Worst output cosine over the samples in `feeds` ((N, *shape) arrays)."""
    worst = 1.0
    for index in range(next(iter(feeds.values())).shape[0]):
        sample = {name: value[index] for name, value in feeds.items()}
        for expected, actual in zip(run(reference, sample), run(candidate, sample)):
            worst = min(worst, output_metrics(expected, actual)["cosine"])
    return worst


def initializer_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Initializer shapes by name with the pass's `.pruned-*`/`.refit` suffixes stripped."""
    shapes = {}
    for tensor in model.graph.initializer:
        shapes[tensor.name.split(".pruned-")[0].split(".refit")[0].split(".sparse")[0]] = tuple(tensor.dims)
    return shapes
