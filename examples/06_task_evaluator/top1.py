"""A hand-written evaluator: top-1 accuracy against labels.npy in the working folder.

graphopt calls `top1(model_path, inputs)` with the path of an .onnx file and the `--inputs`
data (`{input name: array (N, *shape)}`); higher is better.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def top1(model_path: str, inputs: dict[str, np.ndarray]) -> float:
    labels = np.load(Path.cwd() / "labels.npy")
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    count = len(next(iter(inputs.values())))
    predicted = [int(np.argmax(session.run(None, {name: array[index] for name, array in inputs.items()})[0]))
                 for index in range(count)]
    return float(np.mean(np.array(predicted) == labels[:count]))
