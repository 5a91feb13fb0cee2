"""graphopt `quantize` against onnxruntime.quantization on PP-OCR and a transformer encoder, one run.

    python benchmarks/quantize.py [--out benchmarks/results] [--runs 30]

Models: PP-OCRv4 det/rec and PP-OCR cls from the `rapidocr-onnxruntime==1.4.4` wheel (fetched
by `common.fetch_models`; converted to opset 13 with onnx.version_converter, since per-channel
quantization needs it, then graphopt `cleanup`: every variant, fp32 included, starts from that
same model), and a
BERT-style encoder built like `tests/torch_models.py`'s (6 layers, width 384) exported from
torch. Data: synthetic text images drawn with PIL (random words, fonts sizes, colours, noise),
32 for calibration and 8 others for evaluation; token ids likewise, separate sets.
Columns: median latency at 1 thread (ORT_ENABLE_ALL; every variant of a model timed in
alternation, 10 rounds of >= 0.25 s each; also the median CPU time of the calling thread, which
leaves out the time other processes held the core), bytes, output cosine and SQNR against fp32 on the evaluation
set, seconds to quantize. Writes quantize.{md,json} and quantize.png (latency vs cosine).
AMD Quark's rows (`anchors.quark_rows`) need `--quark-python PATH` (a venv of its own with
amd-quark; without it they read 'not installed').
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

import graphopt
from anchors import QUARK_CONFIGS, quark_rows
from common import PP_OCR_MODELS, fetch_models
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import make_session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import torch_models  # noqa: E402

_WORDS = ("graph", "onnx", "int8", "quantize", "invoice", "total", "2026", "OCR", "paddle", "text", "receipt", "VAT",
          "€12.50", "address", "Main St.", "phone", "#4521", "date", "11/23", "model", "latency", "Zen3", "order")
_FONTS = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf"))


def _font(rng, size):
    from PIL import ImageFont
    return ImageFont.truetype(str(_FONTS[rng.integers(len(_FONTS))]), size) if _FONTS else ImageFont.load_default(size=size)


def _page(rng, width: int, height: int):
    """An RGB page of random text lines on a textured light background."""
    from PIL import Image, ImageDraw, ImageFilter
    base = rng.integers(170, 256, 3)
    image = Image.new("RGB", (width, height), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 9)):
        size = int(rng.integers(12, 40))
        text = " ".join(rng.choice(_WORDS, rng.integers(1, 5)))
        xy = (int(rng.integers(-10, width - 20)), int(rng.integers(-5, height - 10)))
        draw.text(xy, text, fill=tuple(int(c) for c in rng.integers(0, 110, 3)), font=_font(rng, size))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
    pixels = np.asarray(image, np.float32) + rng.normal(0, 6, (height, width, 3))
    return np.clip(pixels, 0, 255)


def _line(rng, width: int, height: int):
    """One text line, as the recognizer and the angle classifier see it (sometimes upside down)."""
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(180, 256, 3)))
    draw = ImageDraw.Draw(image)
    text = " ".join(rng.choice(_WORDS, rng.integers(1, 4)))
    draw.text((int(rng.integers(0, 12)), int(rng.integers(2, 10))), text, fill=tuple(int(c) for c in rng.integers(0, 90, 3)),
              font=_font(rng, int(rng.integers(24, 34))))
    if rng.random() < 0.3:
        image = image.rotate(180)
    return np.asarray(image, np.float32) + rng.normal(0, 4, (height, width, 3))


def image_set(label: str, shape, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` preprocessed images for a PP-OCR model's input `x` (N, *shape)."""
    rng = np.random.default_rng(seed)
    _, _, height, width = shape
    images = []
    for _ in range(count):
        if label.endswith("det"):
            pixels = _page(rng, width, height) / 255.0
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            images.append(((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32))
        else:
            pixels = _line(rng, width, height) / 255.0
            images.append(((pixels - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32))
    return {"x": np.stack(images)}


def token_set(count: int, seed: int, seq: int = 64, vocab: int = 1000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (count, 1, seq)).astype(np.int64)
    mask = np.zeros((count, 1, seq), np.int64) + 1
    for index in range(count):
        mask[index, 0, rng.integers(seq // 2, seq + 1):] = 0
    return {"ids": ids, "mask": mask}


def encoder(layers: int = 6, width: int = 384, heads: int = 6, vocab: int = 1000, seq: int = 64) -> onnx.ModelProto:
    """A BERT-style encoder built like tests/torch_models.py's, bigger; inputs ids/mask (1, seq)."""
    import torch
    module = torch_models._transformer_module(0, vocab=vocab, width=width, heads=heads, layers=layers, gelu="none")
    feeds = token_set(1, 0, seq, vocab)
    args = (torch.from_numpy(feeds["ids"][0]), torch.from_numpy(feeds["mask"][0]))
    return torch_models._export(module, args, "torchscript", 17, ["ids", "mask"], ["hidden"])


class _Reader:
    """onnxruntime.quantization's calibration reader over our `(N, *shape)` samples."""

    def __init__(self, samples: dict[str, np.ndarray]):
        self.items = iter([{name: values[i] for name, values in samples.items()} for i in range(len(next(iter(samples.values()))))])

    def get_next(self):
        return next(self.items, None)


def ort_static(path: Path, out: Path, calibration) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    quantize_static(str(path), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return onnx.load(str(out))


def ort_dynamic(path: Path, out: Path, calibration, reduce_range: bool = False) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_dynamic
    quantize_dynamic(str(path), str(out), per_channel=True, reduce_range=reduce_range)
    return onnx.load(str(out))


def ort_dynamic_reduced(path: Path, out: Path, calibration) -> onnx.ModelProto:
    """quantize_dynamic with 7-bit weights: its own answer to the int16 saturation of AVX2 without VNNI."""
    return ort_dynamic(path, out, calibration, reduce_range=True)


def quark(python: str | None, tool: str):
    """AMD Quark's config `tool` (see `anchors.QUARK_CONFIGS`), run by Quark's own interpreter."""
    def run(path: Path, out: Path, calibration) -> onnx.ModelProto:
        samples = out.with_suffix(".calibration.npz")
        np.savez(samples, **calibration)
        row = quark_rows(python, path, samples, out.parent, {tool: QUARK_CONFIGS[tool]})[tool]
        if row["path"] is None:
            raise RuntimeError(f"{row['exit']}: {row.get('error')}")
        return onnx.load(str(row["path"]))
    return run


def graphopt_quantize(options: dict, fuse: dict | None = None, quantize: bool = True):
    """graphopt's `cleanup[,fuse],quantize` (or `cleanup,fuse` alone: how much is fusion, not int8)."""
    passes = ["cleanup"] + (["fuse"] if fuse is not None else []) + (["quantize"] if quantize else [])

    def run(path: Path, out: Path, calibration, evaluation, shapes):
        given = {"quantize": options, "fuse": fuse or {}}
        result = graphopt.optimize(str(path), passes=passes, options={name: given[name] for name in passes if name in given},
                                   calibration=calibration, inputs=evaluation, input_shapes=shapes)
        run.details = result.report["passes"][-1]["details"] if quantize else None
        return result.model
    return run


def outputs(model: onnx.ModelProto, samples: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = make_session(model, optimize=True, threads=1)
    count = len(next(iter(samples.values())))
    results = [session.run(None, {name: values[i] for name, values in samples.items()}) for i in range(count)]
    return [np.stack([r[k] for r in results]) for k in range(len(results[0]))]


def interleaved(models: list[onnx.ModelProto], feed: dict, runs: int, rounds: int = 10,
                min_seconds: float = 0.25) -> tuple[list[float], list[float]]:
    """(median wall ms, median CPU ms) per model; each round runs every model in turn for >= runs/rounds
    runs and >= min_seconds. CPU time is the calling thread's (1-thread onnxruntime runs there): on
    a shared machine it leaves out the time other processes held the core."""
    sessions = [make_session(model, optimize=True, threads=1) for model in models]
    times = [[] for _ in models]
    cpu = [[] for _ in models]
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    for _ in range(rounds):
        for index, session in enumerate(sessions):
            began, done = time.perf_counter(), 0
            while done < max(runs // rounds, 1) or time.perf_counter() - began < min_seconds:
                start, cpu_start = time.perf_counter(), time.thread_time()
                session.run(None, feed)
                times[index].append((time.perf_counter() - start) * 1e3)
                cpu[index].append((time.thread_time() - cpu_start) * 1e3)
                done += 1
    return [statistics.median(t) for t in times], [statistics.median(t) for t in cpu]


def bench(label: str, model: onnx.ModelProto, calibration, evaluation, shapes, variants, runs: int, scratch: Path) -> list[dict]:
    path = scratch / "fp32.onnx"
    onnx.save(model, path)
    reference = outputs(model, evaluation)
    built, rows = [("fp32", model, 0.0, None)], []
    for name, quantizer in variants:
        start = time.perf_counter()
        try:
            if name.startswith("graphopt"):
                quantized = quantizer(path, scratch / f"{name}.onnx", calibration, evaluation, shapes)
            else:
                quantized = quantizer(path, scratch / f"{name}.onnx", calibration)
        except Exception as error:  # a failed variant is a row, not the end of the run
            rows.append({"model": label, "variant": name, "error": f"{type(error).__name__}: {error}"[:300]})
            continue
        built.append((name, quantized, time.perf_counter() - start, getattr(quantizer, "details", None)))
    feed = {name: values[0] for name, values in evaluation.items()}
    latencies, cpu_times = interleaved([m for _, m, _, _ in built], feed, runs)
    for (name, quantized, seconds, details), latency, cpu_ms in zip(built, latencies, cpu_times):
        got = outputs(quantized, evaluation)
        metrics = [output_metrics(r, g) for r, g in zip(reference, got)]
        row = {"model": label, "variant": name, "latency_ms": round(latency, 3), "vs_fp32": round(latency / latencies[0], 3),
               "cpu_ms": round(cpu_ms, 3), "cpu_vs_fp32": round(cpu_ms / cpu_times[0], 3),
               "bytes": quantized.ByteSize(), "size_vs_fp32": round(quantized.ByteSize() / model.ByteSize(), 3),
               "cosine": round(min(m["cosine"] for m in metrics), 5), "sqnr_db": round(min(m["sqnr_db"] for m in metrics), 2),
               "quantize_s": round(seconds, 1)}
        if details:
            row["graphopt"] = {k: details.get(k) for k in ("quantized", "kept_float", "weight_qmax", "latency", "plans_evaluated")}
            row["graphopt"]["why_float"] = sorted({r["why"].split(" (")[0] for r in details.get("layers", []) if r["decision"] == "float"})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--models", default="det,rec,cls,encoder")
    parser.add_argument("--quark-python", default=os.environ.get("GRAPHOPT_QUARK_PYTHON"),
                        help="the interpreter of a venv with amd-quark (default $GRAPHOPT_QUARK_PYTHON; none: its rows read 'not installed')")
    args = parser.parse_args()
    wanted = args.models.split(",")
    quarks = [(tool, quark(args.quark_python, tool)) for tool in QUARK_CONFIGS]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for label, (file, shapes) in PP_OCR_MODELS.items():
            if label.split()[-1] not in wanted:
                continue
            model = onnx.version_converter.convert_version(onnx.load(str(fetch_models() / file)), 13)
            # Every variant starts from the same cleaned model: onnxruntime.quantization needs the
            # weights as initializers (paddle2onnx writes Constant nodes), and fp32 is timed on it too.
            model = graphopt.optimize(model, passes=["cleanup"], verify="off").model
            calibration, evaluation = image_set(label, shapes["x"], 32, 0), image_set(label, shapes["x"], 8, 1)
            variants = [("ort static", ort_static), ("ort dynamic", ort_dynamic), ("graphopt static", graphopt_quantize({}))] + quarks
            rows += bench(label, model, calibration, evaluation, shapes, variants, args.runs, scratch)
        if "encoder" in wanted:
            model = encoder()
            calibration, evaluation = token_set(32, 0), token_set(8, 1)
            contrib = {"target": "onnxruntime"}  # MultiHeadAttention, SkipLayerNormalization, Gelu
            variants = [("ort static", ort_static), ("ort dynamic", ort_dynamic), ("ort dynamic reduce_range", ort_dynamic_reduced),
                        ("graphopt dynamic", graphopt_quantize({"mode": "dynamic"})), ("graphopt static", graphopt_quantize({})),
                        ("graphopt fuse (fp32)", graphopt_quantize({}, fuse=contrib, quantize=False)),
                        ("graphopt fuse+dynamic", graphopt_quantize({"mode": "dynamic"}, fuse=contrib))] + quarks
            rows += bench("encoder 6x384", model, calibration, evaluation, None, variants, args.runs, scratch)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quantize.py " + " ".join(sys.argv[1:])
    (args.out / "quantize.json").write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=1))
    lines = [f"Command: `{command.strip()}`", "",
             "| model | variant | latency ms | vs fp32 | CPU ms | CPU vs fp32 | bytes | size vs fp32 | cosine | SQNR dB | quantize s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['variant']} | failed: {row['error'][:80]} | | | | | | | | |")
            continue
        lines.append(f"| {row['model']} | {row['variant']} | {row['latency_ms']} | {row['vs_fp32']} | {row['cpu_ms']} | "
                     f"{row['cpu_vs_fp32']} | {row['bytes']} | "
                     f"{row['size_vs_fp32']} | {row['cosine']} | {row['sqnr_db']} | {row['quantize_s']} |")
    (args.out / "quantize.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = {"fp32": "o", "ort static": "s", "ort dynamic": "^", "graphopt static": "*", "graphopt dynamic": "P",
               "graphopt fuse (fp32)": "D", "graphopt fuse+dynamic": "X", "ort dynamic reduce_range": "v",
               "Quark A8W8": "h", "Quark A8W8 +CLE/SmoothQuant": "H", "Quark U8S8": "p", "Quark auto-search": "8"}
    for model in dict.fromkeys(r["model"] for r in rows):
        points = [r for r in rows if r["model"] == model and "error" not in r]
        line, = axis.plot([], [], label=model)
        for r in points:
            axis.scatter(max(r["cosine"], 0.5), r["vs_fp32"], marker=markers.get(r["variant"], "x"), color=line.get_color(), s=60)
    for variant, marker in markers.items():
        axis.scatter([], [], marker=marker, color="gray", label=variant)
    axis.axhline(1.0, color="gray", lw=0.5)
    axis.set_yscale("log")
    axis.set_xlabel("output cosine vs fp32 (clipped at 0.5)")
    axis.set_ylabel("latency / fp32 latency (1 thread, log scale)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.out / "quantize.png", dpi=110)


if __name__ == "__main__":
    main()
