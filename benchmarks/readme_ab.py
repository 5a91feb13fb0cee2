"""The README's dev-set rows, an older commit's graphopt against this tree's, timed interleaved on this machine.

README's performance table was measured on one machine; on another, its ratios move with the
CPU (an AVX-512 VNNI host runs int8 far faster than an AVX2 one). "Unchanged or better" is only
shown by running both versions here, side by side: for each model (PP-OCRv4 det/rec, PP-OCR
cls, the 4x256 BERT-style encoder of `run.py`, same data as `run.py`), both versions produce the
README's recipes (`opset,cleanup,fuse` and `…,quantize` at cos=0.99) with 32 calibration and 8
evaluation inputs, then the original and the four outputs are timed interleaved (1 thread,
medians). Columns: nodes, bytes, latency × original, the worst and pooled cosine over the
evaluation inputs, seconds to produce, and whether the two lossless graphs are the same ops on
the same weights.

    python benchmarks/readme_ab.py --base ea7aa64 [--models det,rec,cls,transformer] [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from base_tree import base_tree
from run import accuracy, ocr_models, transformer_model

from graphopt.bench import compare_latency
from graphopt.verify.runner import make_session

RECIPES = {"lossless": (["opset", "cleanup", "fuse"], None), "int8": (["opset", "cleanup", "fuse", "quantize"], "cos=0.99")}

_CHILD = r"""
import json, sys, time
import numpy as np, onnx
import graphopt
path, data, prefix, recipes = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
loaded = np.load(data)
part = lambda tag: {k.split("/", 1)[1]: loaded[k] for k in loaded.files if k.startswith(tag + "/")}
done = {}
for label, (passes, budget) in recipes.items():
    start = time.perf_counter()
    result = graphopt.optimize(path, passes=passes, budget=budget, calibration=part("calibration"),
                               inputs=part("evaluation"), keep_going=True)
    done[label] = {"seconds": time.perf_counter() - start, "file": f"{prefix}_{label}.onnx"}
    onnx.save(result.model, done[label]["file"])
print(json.dumps({"graphopt": graphopt.__file__, "made": done}))
"""


def produce(case: dict, side: str, shim: Path | None, folder: Path) -> dict:
    """{recipe: {"seconds", "file"}} made by one side in a subprocess (outside the repository)."""
    data = folder / "data.npz"
    np.savez(data, **{f"calibration/{k}": v for k, v in case["calibration"].items()},
             **{f"evaluation/{k}": v for k, v in case["evaluation"].items()})
    env = dict(os.environ)
    if shim is not None:
        env["PYTHONPATH"] = f"{shim}{os.pathsep}{env.get('PYTHONPATH', '')}"
    done = subprocess.run([sys.executable, "-c", _CHILD, str(case["path"]), str(data), str(folder / side), json.dumps(RECIPES)],
                          env=env, cwd=folder, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{side} failed on {case['label']}:\n{done.stderr[-2000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if shim is not None and not answer["graphopt"].startswith(str(shim)):
        raise SystemExit(f"the base side imported {answer['graphopt']}, not the base tree")
    return answer["made"]


def same_graph(first: str, second: str) -> bool:
    """The same ops in the same order reading the same weights (names may differ)."""
    a, b = onnx.load(first), onnx.load(second)
    weights = lambda m: sorted((tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in m.graph.initializer)  # noqa: E731
    return [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node] and weights(a) == weights(b)


def worst_cosine(reference: str, candidate: str, evaluation: dict) -> float:
    """The worst per-sample cosine of all outputs flattened together."""
    sessions = [make_session(reference), make_session(candidate)]
    worst = 1.0
    for i in range(len(next(iter(evaluation.values())))):
        sample = {name: values[i] for name, values in evaluation.items()}
        ref, got = (np.concatenate([o.ravel() for o in s.run(None, sample)]).astype(np.float64) for s in sessions)
        worst = min(worst, float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-30)))
    return worst


def bench_case(case: dict, shim: Path, runs: int, folder: Path) -> dict:
    made = {"base": produce(case, "base", shim, folder), "tree": produce(case, "tree", None, folder)}
    files = {"original": str(case["path"])}
    for side in ("base", "tree"):
        for recipe in RECIPES:
            files[f"{side} {recipe}"] = made[side][recipe]["file"]
    sample = {name: values[0] for name, values in case["evaluation"].items()}
    timing = compare_latency(files, sample, threads=1, runs=runs)
    rows = []
    for label, path in files.items():
        model = onnx.load(path)
        side, _, recipe = label.partition(" ")
        pooled = accuracy(str(case["path"]), model, case["evaluation"])["cosine"] if recipe else 1.0
        rows.append({"candidate": label, "nodes": len(model.graph.node), "bytes": os.path.getsize(path),
                     "latency_x": timing[label]["ratio"], "median_ms": timing[label]["median_ms"],
                     "worst_cosine": worst_cosine(str(case["path"]), path, case["evaluation"]) if recipe else 1.0,
                     "pooled_cosine": pooled, "seconds": made[side][recipe]["seconds"] if recipe else 0.0})
    return {"model": case["label"], "rows": rows,
            "lossless_same_graph": same_graph(files["base lossless"], files["tree lossless"])}


def to_markdown(results: list[dict], command: str) -> str:
    lines = [f"Generated by `{command}` (1 onnxruntime thread, medians, the five candidates of a model timed interleaved; "
             "cosines over the 8 evaluation inputs).", ""]
    for result in results:
        lines += [f"### {result['model']} (lossless graphs identical: {'yes' if result['lossless_same_graph'] else 'no'})", "",
                  "| candidate | nodes | bytes | latency × original | worst cosine | pooled cosine | seconds |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['candidate']} | {r['nodes']} | {r['bytes']:,} | {r['latency_x']:.3f} | {r['worst_cosine']:.5f} | "
                  f"{r['pooled_cosine']:.5f} | {r['seconds']:.1f} |" for r in result["rows"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision whose README rows are compared (e.g. ea7aa64)")
    parser.add_argument("--models", default="det,rec,cls,transformer")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = parser.parse_args()
    selected = set(args.models.split(","))
    results = []
    with base_tree(args.base) as shim, tempfile.TemporaryDirectory(prefix="graphopt-readme-ab-") as scratch:
        cases = ocr_models(selected & {"det", "rec", "cls"})
        if "transformer" in selected:
            cases.append(transformer_model(Path(scratch)))
        for index, case in enumerate(cases):
            folder = Path(scratch) / str(index)
            folder.mkdir()
            results.append(bench_case(case, shim, args.runs, folder))
            print(to_markdown(results[-1:], ""), flush=True)
    command = "python benchmarks/readme_ab.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    (out / "readme_ab.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    (out / "readme_ab.md").write_text(to_markdown(results, command))


if __name__ == "__main__":
    main()
