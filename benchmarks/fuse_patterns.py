"""The fuse pattern rules (GELU, LayerNorm, attention, …) on the torch-exported test encoder, in one run.

    python benchmarks/fuse_patterns.py [--repeats 5] [--pp-ocr] [--out benchmarks/results]

For the BERT-style encoder of `tests/torch_models.py` (2 layers, width 32, batch 2 × 16
tokens), exported by both torch exporters, compares the original, graphopt `cleanup,fuse`
(standard ops only) and `cleanup,fuse` with `fuse.target=onnxruntime` against onnxruntime's
own offline-optimized model (ORT_ENABLE_EXTENDED, saved with `optimized_model_filepath`):
nodes, 1-thread median latency under ORT_ENABLE_ALL and ORT_DISABLE_ALL (variants
interleaved, median over `--repeats` rounds), max abs diff against the original, and
graphopt's compile seconds. `--pp-ocr` adds the PP-OCR models (static input shapes from
`common.PP_OCR_MODELS`; there `fuse_ort` equals `fuse`, no contrib pattern applies). Needs
torch (the `test` extra). Writes `fuse_patterns.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort

import graphopt
from common import PP_OCR_MODELS, fetch_models, random_feeds, run_model
from graphopt.bench import measure_latency

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch_models  # noqa: E402  (test material: the exported encoder)

# label -> (exporter, export opset, opset to convert to or None)
MODELS = {
    "encoder torchscript opset 14→17 (LayerNorm decomposed)": ("torchscript", 14, 17),
    "encoder torchscript opset 17": ("torchscript", 17, None),
    "encoder dynamo opset 18": ("dynamo", 18, None),
}


def ort_offline(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as scratch:
        target = str(Path(scratch) / "ort.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = target
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(target)


def max_abs_diff(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict) -> float:
    return float(max(np.max(np.abs(a - b)) for a, b in zip(run_model(reference, feeds), run_model(candidate, feeds))))


def encoder(exporter: str, opset: int, convert_to: int | None) -> tuple[onnx.ModelProto, dict, dict | None]:
    original = torch_models.transformer(exporter, opset)
    if convert_to is not None:
        original = onnx.version_converter.convert_version(original, convert_to)
    return original, torch_models.transformer_feeds(), None


def pp_ocr(file: str, shapes: dict) -> tuple[onnx.ModelProto, dict, dict | None]:
    return onnx.load(str(fetch_models() / file)), random_feeds(shapes), shapes


def bench_model(label: str, original: onnx.ModelProto, feeds: dict, shapes: dict | None, repeats: int, runs: int) -> dict:
    variants = {"original": original}
    row = {"model": label, "opset": original.opset_import[0].version, "nodes": len(original.graph.node)}
    for name, target in (("fuse", "onnx"), ("fuse_ort", "onnxruntime")):
        start = time.perf_counter()
        result = graphopt.optimize(original, passes=["cleanup", "fuse"], options={"fuse": {"target": target}},
                                   verify="off", input_shapes=shapes)
        row[f"{name}_compile_s"] = time.perf_counter() - start
        row[f"{name}_rewrites"] = result.report["passes"][1].get("details", {})
        variants[name] = result.model
    variants["ort_offline"] = ort_offline(original)
    for name, model in variants.items():
        if name != "original":
            row[f"{name}_nodes"] = len(model.graph.node)
            row[f"{name}_max_abs_diff"] = max_abs_diff(original, model, feeds)
    for optimize in (True, False):
        key = "enable_all_ms" if optimize else "disable_all_ms"
        rounds = {name: [] for name in variants}
        for _ in range(repeats):  # interleaved, so drift on the shared machine hits every variant alike
            for name, model in variants.items():
                rounds[name].append(measure_latency(model, feeds, threads=1, runs=runs, optimize=optimize)["median_ms"])
        for name, values in rounds.items():
            row[f"{name}_{key}"] = statistics.median(values)
    return row


def to_markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}`", "",
        "| model | nodes | cleanup,fuse | +target=onnxruntime | ORT offline (EXTENDED) | latency ENABLE_ALL ms: original / fuse / fuse-ort | "
        "latency DISABLE_ALL ms: original / fuse / fuse-ort | max abs diff fuse / fuse-ort | compile s fuse / fuse-ort |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['nodes']} | {r['fuse_nodes']} | {r['fuse_ort_nodes']} | {r['ort_offline_nodes']} | "
            f"{r['original_enable_all_ms']:.3f} / {r['fuse_enable_all_ms']:.3f} / {r['fuse_ort_enable_all_ms']:.3f} | "
            f"{r['original_disable_all_ms']:.3f} / {r['fuse_disable_all_ms']:.3f} / {r['fuse_ort_disable_all_ms']:.3f} | "
            f"{r['fuse_max_abs_diff']:.2g} / {r['fuse_ort_max_abs_diff']:.2g} | "
            f"{r['fuse_compile_s']:.2f} / {r['fuse_ort_compile_s']:.2f} |"
        )
    lines += ["", "Rewrites:", ""]
    lines += [f"- {r['model']}: fuse {r['fuse_rewrites']}; target=onnxruntime {r['fuse_ort_rewrites']}" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pp-ocr", action="store_true", help="also the PP-OCR det/rec/cls models")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    command = "python benchmarks/fuse_patterns.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else "") + (
        " --pp-ocr" if args.pp_ocr else "")
    rows = [bench_model(label, *encoder(*spec), args.repeats, runs=200) for label, spec in MODELS.items()]
    if args.pp_ocr:
        rows += [bench_model(label, *pp_ocr(*spec), args.repeats, runs=15) for label, spec in PP_OCR_MODELS.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuse_patterns.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    markdown = to_markdown(rows, command)
    (args.out / "fuse_patterns.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
