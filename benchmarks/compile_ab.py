"""Compile CPU time of `cleanup,fuse`: a base commit against the working tree, and onnxsim, interleaved.

Each round runs, in turn, one fresh subprocess per side (base, working tree, onnxsim), so a
slow stretch of a shared machine hits all three alike; a subprocess warms up once and reports
the least of `--inner` runs of `graphopt.optimize(path, passes=["cleanup", "fuse"],
verify="off")` (or `onnxsim.simplify(onnx.load(path))`). The table gives each side's minimum
over `--rounds`, and the ratios.

The base is a detached `git worktree` of `--base` in a temporary folder, put first on
PYTHONPATH as `graphopt` and `graphopt_plugins` (the entry points name modules, so the
installed plugins resolve to the base's files). Subprocesses run outside the repository: run
from its root, `python -c` would import the working tree's `graphopt` on both sides (each
base child checks where its modules came from). The working-tree side is whatever `import
graphopt` gives this interpreter: an editable install of this checkout.

Models are PP-OCR's `det`, `rec`, `cls` (fetched), the onnx package's `light_*` models by
name (`resnet50`, `densenet121`...: weights that cleanup materialises, tens of MB), `mlp`:
22 MatMul+Add+Relu layers of 1024x1024 with seeded random weights, 92 MB of initializers, as a
torch export stores them, and `encoder`: a BERT-style encoder (width 768, 4 layers, vocabulary
4000, sequence 128; 88 MB), the TorchScript export of `tests/torch_models.py` (both built once
into the benchmark cache).

`--verify each` times `verify="each"` instead (onnxsim has no verification: its side is the same).

Usage: `python benchmarks/compile_ab.py --base REV [--models det,rec,cls,resnet50] [--rounds 7] [--inner 3]
[--verify off|each] [--out benchmarks/results]`; writes `compile_ab.md` (`compile_ab_each.md` with `--verify each`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from base_tree import base_tree
from common import PP_OCR_MODELS, cache_dir, fetch_models

REPO = Path(__file__).resolve().parents[1]
SHORT_NAMES = {"det": "PP-OCRv4 det", "rec": "PP-OCRv4 rec", "cls": "PP-OCR cls"}

_CHILD = r"""
import sys, time
path, tool, verify = sys.argv[1], sys.argv[2], sys.argv[4]
if tool == "onnxsim":
    import onnx, onnxsim as module
    def once(): module.simplify(onnx.load(path))
else:
    import graphopt as module, graphopt_plugins
    assert graphopt_plugins.__file__.startswith(module.__file__.rsplit("/graphopt/", 1)[0]), "core and plugins from two trees"
    def once(): module.optimize(path, passes=["cleanup", "fuse"], verify=verify)
once()
times = []
for _ in range(int(sys.argv[3])):
    start = time.process_time(); once(); times.append(time.process_time() - start)
print(min(times), module.__file__)
"""


def _child_seconds(path: Path, tool: str, pythonpath: str | None, inner: int, workdir: str, verify: str) -> float:
    """The child's best time; a base child must have imported the base's files."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), tool, str(inner), verify],
                          env=env, cwd=workdir, capture_output=True, text=True, check=True)
    seconds, imported = done.stdout.strip().splitlines()[-1].split(" ", 1)
    if pythonpath is not None and not imported.startswith(pythonpath):
        raise RuntimeError(f"the base side imported {imported}, not the base worktree")
    return float(seconds)


def _mlp(path: Path, width: int = 1024, layers: int = 22) -> Path:
    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(layers):
        weights += [onnx.numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"),
                    onnx.numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"b{i}")]
        nodes += [onnx.helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                  onnx.helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"fc{i}_bias"),
                  onnx.helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = onnx.helper.make_graph(nodes, "mlp", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, width])],
                                   [onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [4, width])], weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return path


def _encoder(path: Path) -> Path:
    if not path.is_file():
        sys.path.insert(0, str(REPO / "tests"))
        import torch_models  # test material: the BERT-style encoder the fuse tests use

        model = torch_models.transformer(width=768, heads=12, layers=4, vocab=4000, batch=1, seq=128)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
    return path


def _model_path(short: str) -> tuple[str, Path]:
    """(label, file) of a model named on the command line."""
    if short == "mlp":
        return "MLP 1024x22 (92 MB)", _mlp(cache_dir() / "mlp_1024x22.onnx")
    if short == "encoder":
        return "BERT-style encoder 768x4 (88 MB)", _encoder(cache_dir() / "encoder_768x4.onnx")
    if short in SHORT_NAMES:
        return SHORT_NAMES[short], fetch_models() / PP_OCR_MODELS[SHORT_NAMES[short]][0]
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{short}.onnx"
    if not path.is_file():
        raise SystemExit(f"unknown model '{short}': give det, rec, cls, mlp or a light_* name such as resnet50")
    return f"light {short}", path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare the working tree against")
    parser.add_argument("--models", default="det,rec,cls")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--verify", choices=("off", "each"), default="off")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")), help="folder for compile_ab.md")
    args = parser.parse_args(argv)
    models = [_model_path(short) for short in args.models.split(",")]
    with base_tree(args.base) as shim, tempfile.TemporaryDirectory(prefix="graphopt-ab-") as scratch:
        sides = {"base": str(shim), "tree": None, "onnxsim": None}
        lines = [f"base {args.base}, verify={args.verify}, min of {args.rounds} rounds x {args.inner} runs, CPU s", "",
                 "| model | base s | working tree s | onnxsim s | tree / base | tree / onnxsim |", "|---|---|---|---|---|---|"]
        print("\n".join(lines))
        for label, path in models:
            best = {side: float("inf") for side in sides}
            for _ in range(args.rounds):
                for side, pythonpath in sides.items():
                    tool = "onnxsim" if side == "onnxsim" else "graphopt"
                    best[side] = min(best[side], _child_seconds(path, tool, pythonpath, args.inner, scratch, args.verify))
            lines.append(f"| {label} | {best['base']:.3f} | {best['tree']:.3f} | {best['onnxsim']:.3f} "
                         f"| {best['tree'] / best['base']:.2f} | {best['tree'] / best['onnxsim']:.2f} |")
            print(lines[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("compile_ab.md" if args.verify == "off" else f"compile_ab_{args.verify}.md")).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
