"""What every benchmark shares: the real models, their cache, timing and output comparison.

The PP-OCR models come inside the `rapidocr-onnxruntime==1.4.4` wheel, fetched with
`pip download` into a cache outside the repo (`$GRAPHOPT_BENCH_CACHE`, default
`~/.cache/graphopt-bench`); the repo never holds them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["WHEEL", "PP_OCR_MODELS", "cache_dir", "fetch_models", "median_seconds", "random_feeds", "run_model", "max_abs_diff", "first_try"]

WHEEL = "rapidocr-onnxruntime==1.4.4"
# label -> (file inside the wheel, the static input shapes we benchmark at)
PP_OCR_MODELS = {
    "PP-OCRv4 det": ("ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 320, 320)}),
    "PP-OCRv4 rec": ("ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}),
    "PP-OCR cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)}),
}


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHOPT_BENCH_CACHE", Path.home() / ".cache" / "graphopt-bench"))


def fetch_models(cache: Path | None = None) -> Path:
    """The folder holding the wheel's .onnx files, downloading and unpacking the wheel once."""
    cache = cache or cache_dir()
    folder = cache / "rapidocr_onnxruntime-1.4.4"
    if not folder.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(cache)], check=True)
        wheel = next(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        staging = folder.with_name(folder.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith(".onnx"):
                    (staging / Path(member).name).write_bytes(archive.read(member))
        staging.rename(folder)  # a half-unpacked cache is never mistaken for a complete one
    return folder


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_feeds(shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def run_model(model: onnx.ModelProto | str, feeds: dict, optimize: bool = False) -> list[np.ndarray]:
    """Outputs under onnxruntime; optimizations off by default so the graph runs as written."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def max_abs_diff(reference: onnx.ModelProto, candidate: onnx.ModelProto, shapes: dict) -> float:
    feeds = random_feeds(shapes)
    return float(max(np.max(np.abs(a - b)) for a, b in zip(run_model(reference, feeds), run_model(candidate, feeds))))


def first_try(model: Path, out: Path, passes: str, env: dict | None = None) -> dict:
    """`graphopt optimize MODEL --passes PASSES -o OUT` with no other flag, as a user runs it: the
    exit code, the last stderr line on failure, whether stderr held a traceback, and on exit 0
    whether OUT passes `check_model(full_check=True)` ("ok" or the checker's first line)."""
    out.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(model), "--passes", passes, "-o", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=out.parent, timeout=900)
    row = {"exit": done.returncode, "traceback": "Traceback" in done.stderr,
           "error": (done.stderr.strip().splitlines() or [""])[-1][:240] if done.returncode else ""}
    if done.returncode == 0:
        try:
            onnx.checker.check_model(str(out), full_check=True)
            row["checker"] = "ok"
        except Exception as error:  # noqa: BLE001 - the row says what the checker said
            row["checker"] = str(error).splitlines()[0][:200]
    return row


def worst_agreement(original: Path, result: Path, samples) -> float:
    """The worst agreement of `result` with `original` over `samples` (one feeds dict each) and
    the outputs: cosine for floats, the fraction of equal elements for integers. `original` runs
    as written, optimizations off (torch's dynamo GRU fails optimized at any other length)."""
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    before = ort.InferenceSession(str(original), plain, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(result), providers=["CPUExecutionProvider"])
    worst = 1.0
    for feeds in samples:
        for want, have in zip(before.run(None, feeds), after.run(None, feeds)):
            want, have = np.asarray(want), np.asarray(have)
            if want.shape != have.shape:
                continue  # picked rows: how many a selection keeps may change; the ids' row says how much
            if want.dtype.kind != "f":
                worst = min(worst, float(np.mean(want == have)) if want.size else 1.0)
                continue
            a, b = want.astype(np.float64).ravel(), have.astype(np.float64).ravel()
            norms = np.linalg.norm(a) * np.linalg.norm(b)
            worst = min(worst, float(a @ b / norms) if norms else float(np.array_equal(a, b)))
    return worst
