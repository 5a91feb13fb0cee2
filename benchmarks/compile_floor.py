"""Where `cleanup,fuse`'s compile time goes, against the cost of its IR alone and onnxsim's whole run.

For each PP-OCR model, CPU seconds (min of `--repeats`, in process, after one warm-up):
- `load`: `onnx.load`;
- `gs_import`, `gs_export`: onnx-graphsurgeon's import and export, the IR round trip any
  graphopt pass pays at least once;
- `infer_check`: one strict shape inference with type checks (what the pipeline runs per pass);
- `floor`: the sum, what graphopt would cost with passes that did nothing;
- `graphopt`: `graphopt.optimize(path, passes=["cleanup", "fuse"], verify="off")`;
- `onnxsim`: `onnxsim.simplify(onnx.load(path))`.

Usage: `python benchmarks/compile_floor.py [--repeats 7] [--out benchmarks/results]`; writes
`compile_floor.json` and prints a table. Run on a quiet machine; CPU time still shifts under load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

import graphopt
from common import PP_OCR_MODELS, fetch_models


def _cpu_seconds(action, repeats: int) -> float:
    action()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        action()
        times.append(time.process_time() - start)
    return min(times)  # the least disturbed run: neighbours only ever add time


def measure(path: Path, repeats: int) -> dict[str, float]:
    import onnxsim

    model = onnx.load(str(path))
    graph = gs.import_onnx(model)
    row = {
        "load": _cpu_seconds(lambda: onnx.load(str(path)), repeats),
        "gs_import": _cpu_seconds(lambda: gs.import_onnx(model), repeats),
        "gs_export": _cpu_seconds(lambda: gs.export_onnx(graph), repeats),
        "infer_check": _cpu_seconds(lambda: onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True), repeats),
    }
    row["floor"] = sum(row.values())
    row["graphopt"] = _cpu_seconds(lambda: graphopt.optimize(str(path), passes=["cleanup", "fuse"], verify="off"), repeats)
    row["onnxsim"] = _cpu_seconds(lambda: onnxsim.simplify(onnx.load(str(path))), repeats)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = parser.parse_args(argv)
    folder = fetch_models()
    rows = {label: measure(folder / name, args.repeats) for label, (name, _) in PP_OCR_MODELS.items()}
    columns = ["load", "gs_import", "gs_export", "infer_check", "floor", "graphopt", "onnxsim"]
    print("| model | " + " | ".join(columns) + " | graphopt / onnxsim | floor / onnxsim |")
    print("|---" * (len(columns) + 3) + "|")
    for label, row in rows.items():
        cells = " | ".join(f"{row[c]:.4f}" for c in columns)
        print(f"| {label} | {cells} | {row['graphopt'] / row['onnxsim']:.2f} | {row['floor'] / row['onnxsim']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_floor.json").write_text(json.dumps({"repeats": args.repeats, "cpu_seconds": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
