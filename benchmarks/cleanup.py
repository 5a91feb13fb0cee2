"""graphopt `cleanup` against onnxsim on the PP-OCR models, in one run.

    python benchmarks/cleanup.py [--repeats 5] [--out benchmarks/results]

Fetches the `rapidocr-onnxruntime==1.4.4` wheel with `pip download` into a cache outside the
repo (`$GRAPHOPT_BENCH_CACHE`, default `~/.cache/graphopt-bench`), then for each model times
(median of `--repeats`): graphopt's API with verification off and on, onnxsim's `simplify`,
and both command lines end to end (process start included). Writes `cleanup.json` and
`cleanup.md` to `--out`. Needs `pip install onnxsim` for the comparison columns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

import graphopt
from common import PP_OCR_MODELS, cache_dir, fetch_models, max_abs_diff, median_seconds

MODELS = PP_OCR_MODELS


def bench_model(label: str, path: Path, shapes: dict, repeats: int) -> dict:
    original = onnx.load(str(path))
    row = {"model": label, "nodes": len(original.graph.node)}
    optimized = graphopt.optimize(str(path), passes=["cleanup"], verify="off").model
    row["graphopt_nodes"] = len(optimized.graph.node)
    row["graphopt_max_abs_diff"] = max_abs_diff(original, optimized, shapes)
    row["graphopt_api_s"] = median_seconds(lambda: graphopt.optimize(str(path), passes=["cleanup"], verify="off"), repeats)
    row["graphopt_api_verified_s"] = median_seconds(
        lambda: graphopt.optimize(str(path), passes=["cleanup"], verify="each", input_shapes=shapes), repeats
    )
    shape_args = [f"--input-shape={name}={','.join(map(str, dims))}" for name, dims in shapes.items()]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out.onnx"
        graphopt_cli = [str(Path(sys.executable).with_name("graphopt")), "optimize", str(path), "-o", str(out), "--quiet"]
        row["graphopt_cli_s"] = median_seconds(lambda: subprocess.run(graphopt_cli + ["--verify", "off"], check=True), repeats)
        row["graphopt_cli_verified_s"] = median_seconds(lambda: subprocess.run(graphopt_cli + shape_args, check=True), repeats)
        try:
            import onnxsim
        except ImportError:
            return row
        simplified, ok = onnxsim.simplify(onnx.load(str(path)))
        row["onnxsim_nodes"] = len(simplified.graph.node)
        row["onnxsim_max_abs_diff"] = max_abs_diff(original, simplified, shapes)
        row["onnxsim_api_s"] = median_seconds(lambda: onnxsim.simplify(onnx.load(str(path))), repeats)
        onnxsim_cli = [str(Path(sys.executable).with_name("onnxsim")), str(path), str(out)]
        row["onnxsim_cli_s"] = median_seconds(
            lambda: subprocess.run(onnxsim_cli, check=True, stdout=subprocess.DEVNULL), repeats
        )
    return row


def to_markdown(rows: list[dict], command: str) -> str:
    columns = [
        ("model", "model"), ("nodes", "nodes"), ("graphopt_nodes", "graphopt nodes"), ("onnxsim_nodes", "onnxsim nodes"),
        ("graphopt_api_s", "graphopt API s"), ("graphopt_api_verified_s", "graphopt API+verify s"),
        ("onnxsim_api_s", "onnxsim API s"), ("graphopt_cli_s", "graphopt CLI s"),
        ("graphopt_cli_verified_s", "graphopt CLI+verify s"), ("onnxsim_cli_s", "onnxsim CLI s"),
        ("graphopt_max_abs_diff", "graphopt max abs diff"), ("onnxsim_max_abs_diff", "onnxsim max abs diff"),
    ]
    lines = [f"Command: `{command}`", "", "| " + " | ".join(title for _, title in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[key]:.3g}" if isinstance(row.get(key), float) else str(row.get(key, "–")) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = parser.parse_args()
    folder = fetch_models(cache_dir())
    rows = [bench_model(label, folder / name, shapes, args.repeats) for label, (name, shapes) in MODELS.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/cleanup.py " + " ".join(sys.argv[1:])
    (out / "cleanup.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    (out / "cleanup.md").write_text(to_markdown(rows, command.strip()))
    print(to_markdown(rows, command.strip()))


if __name__ == "__main__":
    main()
