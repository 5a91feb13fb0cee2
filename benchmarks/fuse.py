"""graphopt `cleanup,fuse` against onnxsim, onnxoptimizer and ORT's offline optimizer, in one run.

    python benchmarks/fuse.py [--runs 30] [--repeats 3] [--models det,rec,...] [--out benchmarks/results]

Models: PP-OCRv4 det/rec and PP-OCR cls (the `rapidocr-onnxruntime==1.4.4` wheel, fetched
with `pip download` into a cache outside the repo), the onnx package's `light_*` models, and
the torch CNN and transformer of `tests/torch_models.py` exported by both exporters into a
temporary folder (needs the `test` extra). Each tool optimizes the model file as given:

- graphopt: `graphopt.optimize(path, passes=["cleanup", "fuse"], verify="off")` (standard ops only);
- onnxsim: `onnxsim.simplify(onnx.load(path))`;
- onnxoptimizer: `onnxoptimizer.optimize(onnx.load(path))` (its default fuse-and-eliminate passes);
- ORT offline: an `InferenceSession` at ORT_ENABLE_EXTENDED with `optimized_model_filepath`
  (the saved model may hold com.microsoft contrib ops, counted in the `contrib` column).

Columns per tool: nodes, bytes (serialized), median latency at 1 thread under ORT_ENABLE_ALL
and under ORT_DISABLE_ALL (as ratios to the original's ORT_ENABLE_ALL median, measured in the
same run with every variant's runs interleaved), max abs diff against the original (random
inputs, optimizations off) and compile CPU seconds (median of `--repeats`, in process, load
included). Writes `fuse.json` and `fuse.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from common import PP_OCR_MODELS, fetch_models
from graphopt.verify.runner import make_session

TOOLS = ("graphopt", "onnxsim", "onnxoptimizer", "ort_offline")
_LIGHT = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
          "vgg19", "zfnet512")


def _pp_ocr(folder: Path) -> dict[str, tuple[Path, dict]]:
    return {label: (folder / name, _random(shapes)) for label, (name, shapes) in PP_OCR_MODELS.items()}


def _random(shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _light() -> dict[str, tuple[Path, dict]]:
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    models = {}
    for name in _LIGHT:
        path = folder / f"light_{name}.onnx"
        model = onnx.load(str(path), load_external_data=False)
        initializers = {t.name for t in model.graph.initializer}
        shapes = {
            value.name: tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
            for value in model.graph.input if value.name not in initializers
        }
        models[f"light {name}"] = (path, _random(shapes))
    return models


def _torch_models(scratch: Path) -> dict[str, tuple[Path, dict]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import torch_models  # the test extra's torch; only the benchmark and the tests need it

    models = {}
    for exporter in torch_models.EXPORTERS:
        for label, make, feeds in (("CNN", torch_models.cnn, torch_models.cnn_feeds()),
                                   ("transformer", torch_models.transformer, torch_models.transformer_feeds())):
            path = scratch / f"torch_{label}_{exporter}.onnx"
            onnx.save(make(exporter), str(path))
            models[f"torch {label} ({exporter})"] = (path, feeds)
    return models


def _graphopt(path: Path) -> onnx.ModelProto:
    return graphopt.optimize(str(path), passes=["cleanup", "fuse"], verify="off").model


def _onnxsim(path: Path) -> onnx.ModelProto:
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        raise RuntimeError("onnxsim could not validate its result")
    return model


def _onnxoptimizer(path: Path) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(onnx.load(str(path)))


def _ort_offline(path: Path) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-ort-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


COMPILERS: dict[str, Callable[[Path], onnx.ModelProto]] = {
    "graphopt": _graphopt, "onnxsim": _onnxsim, "onnxoptimizer": _onnxoptimizer, "ort_offline": _ort_offline,
}


def _compile(tool: str, path: Path, repeats: int) -> tuple[onnx.ModelProto, float]:
    times, model = [], None
    for _ in range(repeats):
        # CPU time of this process (all its threads): the benchmark machine is shared, and wall
        # time measured the neighbours' load as much as the tool.
        start = time.process_time()
        model = COMPILERS[tool](path)
        times.append(time.process_time() - start)
    return model, statistics.median(times)


def _max_abs_diff(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    return float(max(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))) if a.size else 0.0
                     for a, b in zip(reference, outputs, strict=True)))


def _latencies(variants: dict[str, onnx.ModelProto], feeds: dict, runs: int, budget_s: float) -> dict[str, dict[str, float]]:
    """Median ms per variant and level, runs interleaved across variants so noise hits all alike."""
    sessions = {(name, level): make_session(model, optimize=level == "all", threads=1)
                for name, model in variants.items() for level in ("all", "none")}
    for session in sessions.values():  # warm-up
        session.run(None, feeds)
    start = time.perf_counter()
    for session in sessions.values():
        session.run(None, feeds)
    per_round = time.perf_counter() - start
    runs = max(5, min(runs, int(budget_s / max(per_round, 1e-6))))
    times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
    for _ in range(runs):
        for key, session in sessions.items():
            begin = time.perf_counter()
            session.run(None, feeds)
            times[key].append((time.perf_counter() - begin) * 1e3)
    result: dict[str, dict[str, float]] = {name: {} for name in variants}
    for (name, level), values in times.items():
        result[name][level] = statistics.median(values)
    result["_runs"] = runs
    return result


def bench_model(label: str, path: Path, feeds: dict, runs: int, repeats: int, budget_s: float) -> dict:
    original = onnx.load(str(path))
    row: dict = {"model": label, "nodes": len(original.graph.node), "bytes": original.ByteSize()}
    reference = make_session(original).run(None, feeds)
    variants = {"original": original}
    for tool in TOOLS:
        try:
            model, seconds = _compile(tool, path, repeats)
        except Exception as error:  # a tool that fails on a model is a result, not a crash
            row[f"{tool}_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            continue
        row[f"{tool}_nodes"] = len(model.graph.node)
        row[f"{tool}_contrib"] = sum(1 for node in model.graph.node if node.domain not in ("", "ai.onnx"))
        row[f"{tool}_bytes"] = model.ByteSize()
        row[f"{tool}_compile_s"] = seconds
        try:
            outputs = make_session(model).run(None, feeds)
        except Exception as error:
            row[f"{tool}_error"] = f"its model does not run: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            continue
        variants[tool] = model
        row[f"{tool}_max_abs_diff"] = _max_abs_diff(reference, outputs)
    latency = _latencies(variants, feeds, runs, budget_s)
    row["latency_runs"] = latency.pop("_runs")
    base = latency["original"]["all"]
    row["original_all_ms"], row["original_none_ms"] = base, latency["original"]["none"]
    for tool in variants:
        if tool != "original":
            row[f"{tool}_all_ratio"] = latency[tool]["all"] / base
            row[f"{tool}_none_ratio"] = latency[tool]["none"] / base
    print(f"{label}: {row['nodes']} nodes -> " + ", ".join(f"{t} {row.get(f'{t}_nodes', 'failed')}" for t in TOOLS), file=sys.stderr)
    return row


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def to_markdown(rows: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "Nodes (contrib ops in brackets) and serialized MB:", "",
             "| model | original | graphopt | onnxsim | onnxoptimizer | ORT offline | original MB | graphopt MB | onnxsim MB | onnxoptimizer MB | ORT offline MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        nodes = [str(row["nodes"])] + [
            (f"{row[f'{t}_nodes']}" + (f" ({row[f'{t}_contrib']})" if row.get(f"{t}_contrib") else "")) if f"{t}_nodes" in row else "failed"
            for t in TOOLS
        ]
        sizes = [f"{row['bytes'] / 1e6:.2f}"] + [f"{row[f'{t}_bytes'] / 1e6:.2f}" if f"{t}_bytes" in row else "–" for t in TOOLS]
        lines.append(f"| {row['model']} | " + " | ".join(nodes + sizes) + " |")
    lines += ["", "Latency at 1 thread, median, as a ratio to the original under ORT_ENABLE_ALL "
              "(`all` = the variant under ORT_ENABLE_ALL, `none` = under ORT_DISABLE_ALL):", "",
              "| model | original ms (all) | original (none) | graphopt all | graphopt none | onnxsim all | onnxsim none "
              "| onnxoptimizer all | onnxoptimizer none | ORT offline all | ORT offline none | runs |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [_cell(row, "original_all_ms"), f"{row['original_none_ms'] / row['original_all_ms']:.3g}"]
        for tool in TOOLS:
            cells += [_cell(row, f"{tool}_all_ratio"), _cell(row, f"{tool}_none_ratio")]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['latency_runs']} |")
    lines += ["", "Compile CPU seconds (median, in process, load included) and max abs diff against the original:", "",
              "| model | graphopt s | onnxsim s | onnxoptimizer s | ORT offline s | graphopt diff | onnxsim diff | onnxoptimizer diff | ORT offline diff |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [_cell(row, f"{t}_compile_s") for t in TOOLS] + [_cell(row, f"{t}_max_abs_diff") for t in TOOLS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    errors = [(row["model"], t, row[f"{t}_error"]) for row in rows for t in TOOLS if f"{t}_error" in row]
    if errors:
        lines += ["", "Failures:", ""] + [f"- {model}, {tool}: {error}" for model, tool, error in errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="latency runs per variant and level (capped by --budget)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of latency runs per model at most")
    parser.add_argument("--repeats", type=int, default=3, help="compile repeats per tool (median)")
    parser.add_argument("--models", default="", help="comma-separated substrings of model labels to run (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-fuse-") as scratch:
        wanted = [part.strip() for part in args.models.split(",") if part.strip()]
        models = {**_pp_ocr(fetch_models()), **_light()}
        if not wanted or any(w in "torch CNN transformer torchscript dynamo" for w in wanted):
            models.update(_torch_models(Path(scratch)))
        rows = [bench_model(label, path, feeds, args.runs, args.repeats, args.budget)
                for label, (path, feeds) in models.items() if not wanted or any(w in label for w in wanted)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = ("python benchmarks/fuse.py " + " ".join(sys.argv[1:])).strip()
    (out / "fuse.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    (out / "fuse.md").write_text(to_markdown(rows, command))
    print(to_markdown(rows, command))


if __name__ == "__main__":
    main()
