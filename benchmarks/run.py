"""One run, side by side: graphopt's recipes and the anchors on real models, with plots.

    python benchmarks/run.py [--models det,rec,cls,transformer] [--runs 30] [--out benchmarks/results/run]

Models: PP-OCRv4 det/rec and PP-OCR cls from the `rapidocr-onnxruntime==1.4.4` wheel (fetched
with `pip download` into `$GRAPHOPT_BENCH_CACHE`, default `~/.cache/graphopt-bench`), and a
BERT-style encoder exported from torch (if torch is installed). Calibration and evaluation
data are disjoint: 32 and 8 synthetic text images drawn with PIL for the OCR models, 32 and 8
random token sequences for the encoder.

Candidates: each graphopt recipe whose passes are installed, and the anchors (onnxsim,
onnxoptimizer, onnxruntime's offline optimizer, onnxruntime's quantize_static/dynamic).
Columns: nodes, bytes, 1-thread latency median under ORT_ENABLE_ALL (all candidates of a model
timed interleaved, with the ratio to the fp32 original), output cosine and SQNR against the
original on the evaluation data, and seconds to produce. Writes `results.json`, `results.md`
and, per model, `<model>_latency.png` and `<model>_size.png` (cosine against latency and size).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import graphopt
from graphopt.bench import compare_latency
from graphopt.registry import load_registry
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import SessionError, make_session

from anchors import ANCHORS
from common import PP_OCR_MODELS, fetch_models, run_model
from text_images import text_images

ROOT = Path(__file__).resolve().parents[1]

# label -> (passes, options, global budget); a recipe runs only if all its passes are installed
RECIPES = {
    "graphopt lossless": (["opset", "cleanup", "fuse"], {}, None),
    "graphopt int8": (["opset", "cleanup", "fuse", "quantize"], {}, "cos=0.99"),
    # Each lossy pass is verified on its own; one that breaks the budget is rolled back (keep_going).
    "graphopt compress": (["opset", "cleanup", "fuse", "factorize", "prune", "quantize"],
                          {"prune": {"sparsity": 0.3}}, "cos=0.99"),
}
_KIND = {"PP-OCRv4 det": "det", "PP-OCRv4 rec": "rec", "PP-OCR cls": "cls"}


def ocr_models(selected: set[str]) -> list[dict]:
    folder = fetch_models()
    cases = []
    for label, (file, _) in PP_OCR_MODELS.items():
        kind = _KIND[label]
        if kind in selected:
            cases.append({"label": label, "path": folder / file,
                          "calibration": {"x": text_images(kind, 32, seed=0)}, "evaluation": {"x": text_images(kind, 8, seed=1)}})
    return cases


def transformer_model(folder: Path) -> dict | None:
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        import torch_models
    except ImportError:
        return None
    vocab, seq = 1000, 64
    try:
        model = torch_models.transformer("dynamo", 17, layers=4, width=256, heads=4, batch=1, seq=seq, vocab=vocab)
    except ImportError:
        logging.warning("torch is not installed: the encoder is left out")
        return None
    path = folder / "encoder.onnx"
    onnx.save(model, str(path))

    def tokens(count, seed):
        rng = np.random.default_rng(seed)
        mask = np.ones((count, 1, seq), np.int64)
        for i, length in enumerate(rng.integers(seq // 2, seq + 1, count)):
            mask[i, 0, length:] = 0
        return {"ids": rng.integers(0, vocab, (count, 1, seq), dtype=np.int64), "mask": mask}

    return {"label": "encoder (4×256, seq 64)", "path": path, "calibration": tokens(32, 0), "evaluation": tokens(8, 1)}


def accuracy(reference: onnx.ModelProto | str, candidate: onnx.ModelProto, evaluation: dict) -> dict:
    """Cosine and SQNR of all outputs over all evaluation samples, flattened together."""
    count = len(next(iter(evaluation.values())))
    ref, cand = [], []
    for i in range(count):
        sample = {name: values[i] for name, values in evaluation.items()}
        ref += [out.ravel() for out in run_model(reference, sample)]
        cand += [out.ravel() for out in run_model(candidate, sample)]
    metrics = output_metrics(np.concatenate(ref).astype(np.float64), np.concatenate(cand).astype(np.float64))
    return {"cosine": metrics["cosine"], "sqnr_db": metrics["sqnr_db"]}


def candidates(case: dict, installed: set[str]) -> tuple[dict, list[dict]]:
    made, notes = {}, []
    for label, (passes, options, budget) in RECIPES.items():
        missing = [name for name in passes if name not in installed]
        if missing:
            notes.append({"candidate": label, "note": f"not run: pass {', '.join(missing)} not installed"})
            continue
        start = time.perf_counter()
        try:
            result = graphopt.optimize(str(case["path"]), passes=passes, options=options, budget=budget,
                                       calibration=case["calibration"], inputs=case["evaluation"], keep_going=True)
        except graphopt.GraphoptError as error:
            notes.append({"candidate": label, "note": f"failed: {error}"})
            continue
        made[label] = (result.model, time.perf_counter() - start, budget is not None)
    for label, (make, lossy) in ANCHORS.items():
        try:
            model, seconds = make(case["path"], case["calibration"])
        except Exception as error:  # an anchor's failure is a result to report, not a crash
            notes.append({"candidate": label, "note": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"})
            continue
        try:
            make_session(model)
        except SessionError as error:
            notes.append({"candidate": label, "note": f"its model does not load in onnxruntime: {error}"})
            continue
        made[label] = (model, seconds, lossy)
    return made, notes


def bench_case(case: dict, installed: set[str], runs: int) -> dict:
    original = onnx.load(str(case["path"]))
    made, notes = candidates(case, installed)
    sample = {name: values[0] for name, values in case["evaluation"].items()}
    models = {"fp32 original": str(case["path"]), **{label: model for label, (model, _, _) in made.items()}}
    timings = compare_latency(models, sample, threads=1, runs=runs)
    rows = [{"candidate": "fp32 original", "nodes": len(original.graph.node), "bytes": original.ByteSize(),
             "seconds": 0.0, "cosine": 1.0, "sqnr_db": float("inf"), **_latency(timings["fp32 original"])}]
    for label, (model, seconds, _) in made.items():
        rows.append({"candidate": label, "nodes": len(model.graph.node), "bytes": model.ByteSize(), "seconds": seconds,
                     **accuracy(str(case["path"]), model, case["evaluation"]), **_latency(timings[label])})
    return {"model": case["label"], "rows": rows, "notes": notes}


def _latency(timing: dict) -> dict:
    return {"latency_ms": timing["median_ms"], "latency_ratio": timing["ratio"], "latency_p90_ms": timing["p90_ms"]}


def to_markdown(results: list[dict], command: str) -> str:
    lines = [f"Command: `{command}` — 1 onnxruntime thread, ORT_ENABLE_ALL, medians; all candidates of a model timed interleaved.", ""]
    for result in results:
        lines += [f"### {result['model']}", "",
                  "| candidate | nodes | bytes | latency ms (median) | × original | cosine | SQNR dB | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in result["rows"]:
            lines.append(f"| {row['candidate']} | {row['nodes']} | {row['bytes']:,} | {row['latency_ms']:.2f} | "
                         f"{row['latency_ratio']:.2f} | {row['cosine']:.5f} | {row['sqnr_db']:.1f} | {row['seconds']:.2f} |")
        lines += [f"- {note['candidate']}: {note['note']}" for note in result["notes"]]
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = "".join(c if c.isalnum() else "_" for c in result["model"]).strip("_").lower()
    written = []
    markers = "o^sDvP*Xh<>"
    for key, axis_label, suffix in (("latency_ratio", "latency, × fp32 original (1 thread, medians)", "latency"),
                                    ("bytes", "model bytes", "size")):
        figure, axes = plt.subplots(figsize=(8, 4.5))
        for index, row in enumerate(result["rows"]):
            graphopt_made = row["candidate"].startswith("graphopt")
            axes.scatter(row[key], row["cosine"], marker=markers[index % len(markers)], s=60,
                         color="tab:blue" if graphopt_made else "black" if index == 0 else f"C{1 + index % 8}",
                         label=row["candidate"], edgecolors="white", linewidths=0.5)
        axes.set_xlabel(axis_label)
        axes.set_ylabel("output cosine vs fp32")
        axes.set_title(f"{result['model']}: accuracy against {suffix}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        path = out / f"{stem}_{suffix}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path.name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,rec,cls,transformer")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "run"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    selected = set(args.models.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    installed = set(load_registry().registry.names())
    with tempfile.TemporaryDirectory() as folder:
        cases = ocr_models(selected)
        if "transformer" in selected:
            encoder = transformer_model(Path(folder))
            cases += [encoder] if encoder else []
        results = []
        for case in cases:
            print(f"benchmarking {case['label']} ...", file=sys.stderr)
            results.append(bench_case(case, installed, args.runs))
            results[-1]["plots"] = plot(results[-1], out)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    (out / "results.json").write_text(json.dumps({"command": command.strip(), "results": results}, indent=2, default=str) + "\n")
    (out / "results.md").write_text(to_markdown(results, command.strip()))
    print(to_markdown(results, command.strip()))


if __name__ == "__main__":
    main()
