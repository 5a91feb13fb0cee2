"""graphopt as a stage right after torch.onnx.export: ModelProto in, ModelProto out, nothing on disk.

    pip install "graphopt[examples]"      # torch is needed by this example only
    python examples/02_api_after_export/export_and_optimize.py [OUTPUT.onnx]
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch

import graphopt


class TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.BatchNorm2d(16), torch.nn.Hardswish(),
        )
        self.head = torch.nn.Linear(16, 10)

    def forward(self, image):
        return self.head(self.features(image).mean(dim=(2, 3)))


def export(module: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """torch's default (dynamo) exporter, kept in memory: its ONNXProgram holds the ModelProto."""
    program = torch.onnx.export(module, (example,), dynamo=True, opset_version=18,
                                input_names=["image"], output_names=["logits"], verbose=False)
    return program.model_proto


def main() -> None:
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("graphopt").setLevel(logging.INFO)  # graphopt logs, never prints
    torch.manual_seed(0)
    module = TinyClassifier().eval()
    example = torch.randn(1, 3, 32, 32)
    exported = export(module, example)

    # Verification inputs: real ones if you have them (N samples per input), else generated.
    samples = {"image": np.random.default_rng(0).standard_normal((8, 1, 3, 32, 32)).astype(np.float32)}
    result = graphopt.optimize(exported, passes=["cleanup", "fuse"], inputs=samples)

    for entry in result.report["passes"]:
        print(f"{entry['name']:8} {entry['status']:9} {entry['nodes_before']:3} -> {entry['nodes_after']:3} nodes  {entry['details']}")
    end_to_end = result.report["verification"]["end_to_end"]
    print("verified end to end:", end_to_end["ok"])

    # The optimized model is an ordinary ModelProto: hand it to the next stage, or save it.
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": example.numpy()})
    with torch.no_grad():
        expected = module(example).numpy()
    print("max abs difference from PyTorch:", float(np.max(np.abs(logits - expected))))
    if len(sys.argv) > 1:
        onnx.save(result.model, sys.argv[1])


if __name__ == "__main__":
    main()
