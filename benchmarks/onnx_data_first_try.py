"""The first-try command on every model the onnx package ships, tallied by outcome.

`graphopt optimize MODEL --passes PASSES -o OUT` with no other flag, through the CLI as a user
runs it, on `onnx/backend/test/data/{light,pytorch-converted,pytorch-operator,simple}` (149
models: ImageNet CNNs at opset 9 with constant-filled weights, and 2017-era PyTorch exports at
opset 6, IR 3, among others). For each: exit code, whether stderr held a traceback, whether the
output passes `onnx.checker.check_model(full_check=True)`, and, where the folder has a
`test_data_set_0`, the worst cosine of graphopt's output against the expected outputs on those
real inputs (onnxruntime, 1 thread). Writes `onnx_data_first_try.{md,json}`.

Usage: `python benchmarks/onnx_data_first_try.py [--passes fuse,factorize,quantize] [--out benchmarks/results]`
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from common import first_try

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def _models() -> list[tuple[str, Path]]:
    light = [(path.stem, path) for path in sorted(DATA.glob("light/*.onnx"))]
    folders = [(f"{path.parent.parent.name}/{path.parent.name}", path) for path in sorted(DATA.glob("*/*/model.onnx"))]
    return light + folders


def _cosine_on_test_data(model_path: Path, output: Path) -> float | None:
    """Worst cosine of `output` against the folder's expected outputs on its own inputs; None without data."""
    data = model_path.parent / "test_data_set_0"
    if model_path.name != "model.onnx" or not data.is_dir():
        return None
    inputs = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob("input_*.pb"))]
    expected = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob("output_*.pb"))]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {arg.name: value for arg, value in zip(session.get_inputs(), inputs)})
    worst = 1.0
    for want, have in zip(expected, got):
        want, have = np.asarray(want), np.asarray(have)
        if want.dtype.kind not in "fiub":  # strings: equal or not
            worst = min(worst, 1.0 if want.shape == have.shape and bool(np.all(want == have)) else 0.0)
            continue
        a, b = want.astype(np.float64).ravel(), have.astype(np.float64).ravel()
        if not np.all(np.isfinite(a)):
            continue
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        worst = min(worst, 1.0 if norms == 0 and np.array_equal(a, b) else float(a @ b / norms) if norms else 0.0)
    return worst


def _one(label: str, path: Path, passes: str, scratch: Path) -> dict:
    out = scratch / "out.onnx"
    row = {"model": label, **first_try(path, out, passes)}
    if row["exit"] == 0:
        row["cosine_on_test_data"] = _cosine_on_test_data(path, out)
    return row


def _why(error: str) -> str:
    """A short class for an exit-2 message."""
    for key, why in (("has no kernel", "onnxruntime has no kernel for the input model (opset < 7 ops)"),
                     ("on generated inputs", "onnxruntime cannot run the input model on generated inputs"),
                     ("at any shape", "onnxruntime cannot run the model at any shape graphopt chose")):
        if key in error:
            return why
    return error[:120]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", default="fuse,factorize,quantize")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphopt-onnx-data-") as scratch:
        for label, path in _models():
            rows.append(_one(label, path, args.passes, Path(scratch)))
            print(json.dumps(rows[-1]), flush=True)
    exits = collections.Counter(row["exit"] for row in rows)
    reasons = collections.Counter(_why(row["error"]) for row in rows if row["exit"] != 0)
    cosines = [row["cosine_on_test_data"] for row in rows if row.get("cosine_on_test_data") is not None]
    lines = [f"Command: `python benchmarks/onnx_data_first_try.py --passes {args.passes}` ({len(rows)} models)", "",
             "| outcome | models |", "|---|---|"]
    lines += [f"| exit {code} | {count} |" for code, count in sorted(exits.items())]
    lines += [f"| tracebacks | {sum(row['traceback'] for row in rows)} |",
              f"| exit 0 failing the full checker | {sum(row.get('checker', 'ok') != 'ok' for row in rows)} |",
              f"| exit 0 with test data: worst cosine against the expected outputs (min / median) | "
              f"{len(cosines)}: {min(cosines):.5f} / {float(np.median(cosines)):.5f} |" if cosines else "| test data | none |",
              "", "Why the others stopped (exit 2, one line each on stderr):", ""]
    lines += [f"- {count}: {why}" for why, count in reasons.most_common()]
    lines += ["", "| model | exit | checker | cosine on test data | error |", "|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['exit']} | {row.get('checker', '')} | "
              f"{'' if row.get('cosine_on_test_data') is None else format(row['cosine_on_test_data'], '.5f')} | {row['error']} |"
              for row in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx_data_first_try.md").write_text("\n".join(lines) + "\n")
    (args.out / "onnx_data_first_try.json").write_text(json.dumps({"passes": args.passes, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines[:12 + len(reasons)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
