"""Writes a small classifier, its inputs, calibration data and labels into a folder.

    python make_task.py OUTDIR

task.onnx: 64 features → 256 → ReLU → 256 → ReLU → 10 logits, weights of low effective rank
(as trained layers are), so factorize has something to take. labels.npy holds the classes the
model itself predicts on inputs.npz: its top-1 is 1.0 and every flipped prediction shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort


def _low_rank(rng, rows, cols, rank):
    return (rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols)) / np.sqrt(rank * rows)
            + 0.02 * rng.normal(size=(rows, cols)) / np.sqrt(rows)).astype(np.float32)


def build(rng) -> onnx.ModelProto:
    weights = {"w1": _low_rank(rng, 64, 256, 16), "w2": _low_rank(rng, 256, 256, 24), "w3": _low_rank(rng, 256, 10, 10)}
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["a"]), oh.make_node("Relu", ["a"], ["b"]),
             oh.make_node("MatMul", ["b", "w2"], ["c"]), oh.make_node("Relu", ["c"], ["d"]),
             oh.make_node("MatMul", ["d", "w3"], ["logits"])]
    graph = oh.make_graph(nodes, "task", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                          [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 10])],
                          [onnx.numpy_helper.from_array(value, name) for name, value in weights.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def main(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    model = build(rng)
    onnx.save(model, folder / "task.onnx")
    inputs = rng.normal(size=(64, 1, 64)).astype(np.float32)
    np.savez(folder / "inputs.npz", x=inputs)
    np.savez(folder / "calibration.npz", x=rng.normal(size=(32, 1, 64)).astype(np.float32))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = np.array([int(np.argmax(session.run(None, {"x": sample})[0])) for sample in inputs])
    np.save(folder / "labels.npy", labels)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
