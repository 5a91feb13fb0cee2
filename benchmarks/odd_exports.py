"""The first-try command on models with traits real exports have and the test models lacked.

Each model is built here (torch 2.13 exports, onnxruntime's own tools, onnx's helper), then
`graphopt optimize MODEL --passes fuse,factorize,quantize -o OUT` runs with no other flag,
through the CLI, for this checkout and, with `--base REV`, for a base commit (a detached
worktree first on PYTHONPATH, as `compile_ab.py` does). A row: exit code, the last stderr line
on failure, whether the output passes `check_model(full_check=True)`, and the worst cosine of
the output (onnxruntime, optimizations on, as a device runs it) against the input model
(optimizations off: the dynamo GRU fails optimized at any other length) on 4 random inputs;
integer outputs: the fraction of equal elements.

Usage: `python benchmarks/odd_exports.py [--base REV] [--out benchmarks/results]`; writes `odd_exports.md`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import trait_models  # noqa: E402
from common import first_try, worst_agreement  # noqa: E402


def _half_encoder(folder: Path) -> Path:
    """The trait encoder kept in float16 (graphopt's fp16 pass), float32 at its interface."""
    source, path = folder / "encoder.onnx", folder / "encoder_fp16.onnx"
    onnx.save(trait_models.dynamic_transformer(), source)
    subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(source), "--passes", "fp16", "-o", str(path), "--quiet"],
                   check=True, cwd=folder)
    return path


def _ort_transformer_optimized(folder: Path) -> Path:
    """The trait encoder after onnxruntime's transformer optimizer: com.microsoft Attention, SkipLayerNormalization."""
    from onnxruntime.transformers import optimizer

    source, path = folder / "encoder.onnx", folder / "encoder_ort_fused.onnx"
    onnx.save(trait_models.dynamic_transformer(), source)
    optimizer.optimize_model(str(source), model_type="bert", num_heads=2, hidden_size=32, opt_level=1).save_model_to_file(str(path))
    return path


def _dynamo_gru(folder: Path) -> Path:
    """A 2-layer GRU + Linear, torch's dynamo exporter with a dynamic time dim (it annotates time = 20)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.fc = torch.nn.GRU(32, 64, batch_first=True, num_layers=2), torch.nn.Linear(64, 5)

        def forward(self, x):
            return self.fc(self.gru(x)[0])

    torch.manual_seed(0)
    path = folder / "gru_dynamo.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 20, 32),), str(path), input_names=["x"], dynamo=True,
                      dynamic_shapes={"x": {1: torch.export.Dim("time")}})
    return path


def _argmax_segmenter(folder: Path) -> Path:
    """A small segmenter ending in ArgMax over 21 classes (TorchScript export, opset 13)."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 21, 1), torch.nn.Upsample(scale_factor=4, mode="bilinear"))

    class Seg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).argmax(1)

    torch.manual_seed(0)
    path = folder / "segmenter_argmax.onnx"
    torch.onnx.export(Seg().eval(), (torch.randn(1, 3, 128, 128),), str(path), input_names=["x"], output_names=["mask"],
                      opset_version=13, dynamo=False, dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    return path


def _nms_detector(folder: Path) -> Path:
    """Conv trunk, boxes and sigmoid scores, NonMaxSuppression, the picked boxes gathered (onnx helper)."""
    rng = np.random.default_rng(0)
    weight = lambda name, shape, scale: numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)  # noqa: E731
    const = lambda name, value: numpy_helper.from_array(np.array(value), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "wb"], ["b"]), helper.make_node("Conv", ["r2", "ws"], ["s"]),
             helper.make_node("Reshape", ["b", "shape4"], ["b3"]), helper.make_node("Transpose", ["b3"], ["boxes"], perm=[0, 2, 1]),
             helper.make_node("Mul", ["boxes", "pixels"], ["boxes_px"]), helper.make_node("Sigmoid", ["s"], ["s1"]),
             helper.make_node("Reshape", ["s1", "shape3"], ["scores"]),
             helper.make_node("NonMaxSuppression", ["boxes_px", "scores", "top", "iou", "least"], ["selected"]),
             helper.make_node("Gather", ["selected", "two"], ["index"], axis=1),
             helper.make_node("Gather", ["boxes_px", "index"], ["picked"], axis=1)]
    initializers = [weight("w1", (32, 3, 3, 3), 0.2), weight("w2", (32, 32, 3, 3), 0.1), weight("wb", (4, 32, 1, 1), 0.1),
                    weight("ws", (3, 32, 1, 1), 0.3), const("shape4", np.array([1, 4, -1], np.int64)),
                    const("shape3", np.array([1, 3, -1], np.int64)), const("pixels", np.array(64.0, np.float32)),
                    const("top", np.array([20], np.int64)), const("iou", np.array([0.5], np.float32)),
                    const("least", np.array([0.5], np.float32)), const("two", np.array(2, np.int64))]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("selected", TensorProto.INT64, ["k", 3]),
                               helper.make_tensor_value_info("picked", TensorProto.FLOAT, [1, "k", 4])], initializers)
    path = folder / "detector_nms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _shapeless_output(folder: Path) -> Path:
    """The trait CNN with its output declared by type only, as `make_tensor_value_info(name, FLOAT, None)` writes it."""
    model = trait_models.dynamic_cnn(17)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    path = folder / "cnn_output_without_shape.onnx"
    onnx.save(model, path)
    return path


BUILDERS = [_half_encoder, _ort_transformer_optimized, _dynamo_gru, _argmax_segmenter, _nms_detector, _shapeless_output]


def _feeds(model_path: Path, seed: int) -> dict:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if i == 0 else 64) for i, d in enumerate(value.shape)]
        if "int" in value.type:
            feeds[value.name] = rng.integers(0, 50, shape).astype(np.int64)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float16 if "float16" in value.type else np.float32)
    return feeds


def _agreement(original: Path, result: Path) -> float:
    """Worst over 4 inputs and the outputs: cosine for floats (same shape), fraction equal for integers."""
    return worst_agreement(original, result, (_feeds(original, seed) for seed in range(4)))


def _run(path: Path, out: Path, env: dict) -> dict:
    row = first_try(path, out, "fuse,factorize,quantize", env)
    if row["exit"] == 0:
        row["agreement"] = _agreement(path, out)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a commit to run beside this checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="graphopt-odd-") as scratch:
        folder = Path(scratch)
        sides = {"this checkout": dict(os.environ)}
        if args.base:
            base = folder / "base"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base], check=True, capture_output=True)
            sides[f"base {args.base}"] = dict(os.environ, PYTHONPATH=str(base))
        rows = []
        try:
            for build in BUILDERS:
                path = build(folder)
                row = {"model": path.stem, "doc": build.__doc__.splitlines()[0]}
                for side, env in sides.items():
                    row[side] = _run(path, folder / f"{path.stem}.out.onnx", env)
                rows.append(row)
                print(row, flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder / "base")], capture_output=True)
    lines = ["Command: `python benchmarks/odd_exports.py" + (f" --base {args.base}`" if args.base else "`"), "",
             "| model | " + " | ".join(f"{side}: exit, checker, agreement" for side in sides) + " |",
             "|---|" + "---|" * len(sides)]
    for row in rows:
        cells = []
        for side in sides:
            result = row[side]
            cells.append(f"{result['exit']}, {result.get('checker', '')}, {result['agreement']:.5f}" if result["exit"] == 0
                         else f"{result['exit']}: {result['error']}")
        lines.append(f"| {row['model']} ({row['doc']}) | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "odd_exports.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
