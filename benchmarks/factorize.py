"""graphopt `factorize`: MACs/params saved against output cosine, plain SVD vs data-aware, with latency.

    python benchmarks/factorize.py [--targets 0.1,0.2,0.3] [--svd-targets 0.1,0.2] [--latency-targets 0.1,0.2]
                                   [--calibration 32] [--held-out 16] [--latency-runs 30] [--rank-multiple 16]
                                   [--conv auto] [--pre opset,cleanup,fuse] [--models det,rec,transformer] [--out benchmarks/results]

Models: PP-OCRv4 det and rec from the `rapidocr-onnxruntime==1.4.4` wheel (trained weights;
fetched into `$GRAPHOPT_BENCH_CACHE` by `common.fetch_models`), fed synthetic text images
(random strings drawn with Pillow, normalised as PaddleOCR does), and a BERT-style encoder
exported from torch the way `tests/torch_models.py` builds its test model, but 384 wide with 6
layers — randomly initialised, so *not* low-rank the way trained networks are.

Each model first goes through the lossless `--pre` passes (as `benchmarks/run.py` does: BN
folded, activations fused), and that model is the baseline. For each method (`svd`, `data`,
and `data` with `saving_by=latency`, which times every layer alone in onnxruntime and spends
the loss where the split buys time) and global MAC target, the `factorize` pass runs with
its budget check off (so the whole curve shows) and `conv=auto` (each k×k Conv split on
its input or its output side, whichever fits the data better; `--conv channel` for the
output side only); MACs and params are counted by graphopt's
summary at the benchmark's static shapes, cosine is measured on held-out inputs the fit never
saw, and 1-thread latency (onnxruntime, ORT_ENABLE_ALL) is timed interleaved with the original
in the same run (medians; an A/A timing of the original against itself gives the noise floor). Writes factorize.{json,md} and PNG curves to `--out`.

`--corpus` runs the real-model corpus instead (benchmarks/lossy_corpus.py: `cleanup,fuse,factorize`
at the user's budget through the CLI, worst-sample and pooled cosine on held-out inputs, run
time, latency ratio, bytes); its other flags pass through.
"""

from __future__ import annotations

import os

# One BLAS thread: on a shared 2-core machine OpenBLAS's spinning threads make the fits ~10× slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import graphopt  # noqa: E402
from common import PP_OCR_MODELS, cache_dir, fetch_models
from graphopt.model import infer_model_shapes
from graphopt.summary import summarize
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import make_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,:-/"


def _text_image(rng, width, height, lines):
    """A light page with `lines` random strings in dark ink, as an HWC uint8 RGB array."""
    from PIL import Image, ImageDraw, ImageFont

    background = tuple(int(v) for v in rng.integers(180, 256, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(lines):
        size = int(rng.integers(height // 2, height - 4)) if lines == 1 else int(rng.integers(14, 40))
        font = ImageFont.load_default(size=size)
        text = "".join(rng.choice(list(_ALPHABET), int(rng.integers(6, 24))))
        x = int(rng.integers(0, max(1, width // 4)))
        y = int(rng.integers(0, max(1, height - size))) if lines > 1 else int((height - size) * 0.3)
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text((x, y), text, fill=ink, font=font)
    array = np.asarray(image, dtype=np.float32)
    return array + rng.normal(0, 4, array.shape).astype(np.float32)


def ocr_inputs(kind: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` synthetic samples (N, 1, 3, H, W), normalised as PaddleOCR's det / rec preprocess."""
    rng = np.random.default_rng(seed)
    if kind == "det":
        images = [_text_image(rng, 320, 320, lines=8) for _ in range(count)]
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        batch = [((np.clip(im, 0, 255) / 255.0 - mean) / std).transpose(2, 0, 1) for im in images]
    else:
        images = [_text_image(rng, 320, 48, lines=1) for _ in range(count)]
        batch = [((np.clip(im, 0, 255) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1) for im in images]
    return {"x": np.stack(batch)[:, None].astype(np.float32)}


def transformer_model(width: int, layers: int, seq: int):
    """The test suite's BERT-style encoder, bigger: (model, calibration, held-out inputs)."""
    import torch
    import torch_models

    module = torch_models._transformer_module(0, vocab=1000, width=width, heads=width // 64, layers=layers, gelu="none")
    feeds = torch_models.transformer_feeds(batch=1, seq=seq, vocab=1000)
    args = (torch.from_numpy(feeds["ids"]), torch.from_numpy(feeds["mask"]))
    model = torch_models._export(module, args, "torchscript", 17, ["ids", "mask"], ["hidden"])

    def inputs(count, seed):
        rng = np.random.default_rng(seed)
        return {"ids": rng.integers(0, 1000, (count, 1, seq)), "mask": np.ones((count, 1, seq), np.int64)}

    return model, inputs


def _static(model: onnx.ModelProto, sample: dict[str, np.ndarray]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        if value.name in sample:
            for dim, size in zip(value.type.tensor_type.shape.dim, sample[value.name].shape[1:]):
                dim.Clear()
                dim.dim_value = int(size)
    return infer_model_shapes(fixed)


def _outputs(model, inputs):
    session = make_session(model)
    count = next(iter(inputs.values())).shape[0]
    return [session.run(None, {k: v[i] for k, v in inputs.items()}) for i in range(count)]


def _cosine(reference, candidate) -> float:
    return min(output_metrics(np.stack([r[j] for r in reference]), np.stack([c[j] for c in candidate]))["cosine"]
               for j in range(len(reference[0])))


def interleaved_latency(original, candidate, feeds, runs: int) -> tuple[float, float, float, float]:
    """Median and min ms of one 1-thread run (ORT_ENABLE_ALL) of each model, interleaved run by run.

    The order alternates (AB, BA, …): on the loaded machine an A/A test showed the second of a
    pair 5–12% slower, a bias a fixed order would credit to one model.
    """
    sessions = [make_session(original, optimize=True, threads=1), make_session(candidate, optimize=True, threads=1)]
    for session in sessions:
        for _ in range(3):
            session.run(None, feeds)
    times: list[list[float]] = [[], []]
    for round_index in range(runs):
        for index in ((0, 1) if round_index % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            sessions[index].run(None, feeds)
            times[index].append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1]), min(times[0]), min(times[1])


def bench(label, model, calibration, held_out, variants, runs, rank_multiple, conv) -> list[dict]:
    model = _static(model, calibration)
    before = summarize(model)
    reference = _outputs(model, held_out)
    feeds = {k: v[0] for k, v in held_out.items()}
    # The noise floor: the original against itself, timed the same way (1.00 on a quiet machine).
    aa_base, aa_same, _, _ = interleaved_latency(model, model, feeds, runs)
    rows = []
    for method, method_targets in variants:
        for target in method_targets:
            # A fixed-target row has no accuracy budget to meet: cos must be in (0, 1], so the loosest one.
            options = {"method": method.split("/")[0], "rank_by": "target", "target": f"macs={target}", "backoff": 0,
                       "budget": "cos=1e-6", "sensitivity_samples": 4, "rank_multiple": rank_multiple, "conv": conv,
                       "saving_by": "latency" if method.endswith("/latency") else "macs"}
            start = time.perf_counter()
            result = graphopt.optimize(model, passes=["factorize"], options={"factorize": options},
                                       calibration=calibration, verify="off")
            seconds = time.perf_counter() - start
            after = summarize(_static(result.model, calibration))
            details = result.report["passes"][0]["details"]
            # The pass's own MAC count: graphopt's summary misses layers whose shapes inference
            # cannot follow (the SVTR neck of rec), the pass counts them from real activations.
            saved = details.get("macs_before", 0) - details.get("macs_after", 0)
            total = details.get("model_macs_before") or before["macs"]
            base_ms, new_ms, base_min, new_min = interleaved_latency(model, result.model, feeds, runs)
            row = {
                "model": label, "method": method, "target": target, "layers": details.get("factorized", 0),
                "macs_before": total, "macs_after": total - saved, "macs_reduction": saved / total,
                "summary_macs_reduction": 1 - after["macs"] / before["macs"],
                "params_reduction": 1 - after["parameters"] / before["parameters"],
                "cosine": _cosine(reference, _outputs(result.model, held_out)),
                "calibration_cosine": min((v["cosine"] for v in details.get("calibration_metrics", {}).values()), default=None),
                "refitted": details.get("refitted"), "latency_ms": new_ms, "baseline_ms": base_ms, "speedup": base_ms / new_ms, "aa_ratio": aa_base / aa_same,
                "min_ms": new_min, "baseline_min_ms": base_min, "speedup_min": base_min / new_min, "pass_seconds": seconds,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def plot(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for label in dict.fromkeys(row["model"] for row in rows):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for method, style in (("svd", "o--"), ("data", "s-"), ("data/latency", "^-")):
            points = [row for row in rows if row["model"] == label and row["method"] == method]
            xs = [100 * row["macs_reduction"] for row in points]
            axes[0].plot(xs, [row["cosine"] for row in points], style, label=f"{method}")
            axes[1].plot(xs, [row["speedup"] for row in points], style, label=f"{method}")
        axes[0].axhline(0.99, color="grey", lw=0.8)
        axes[0].set(xlabel="MAC reduction (%)", ylabel="output cosine (held-out, worst output)", title=label)
        axes[1].axhline(1.0, color="grey", lw=0.8)
        axes[1].set(xlabel="MAC reduction (%)", ylabel="1-thread speedup vs original", title=label)
        for axis in axes:
            axis.legend()
            axis.grid(alpha=0.3)
        fig.tight_layout()
        name = "factorize_" + label.lower().replace(" ", "_").replace("-", "") + ".png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def to_markdown(rows: list[dict], command: str, plots: list[str]) -> str:
    lines = [f"Command: `{command}`", "",
             "| model | method | MAC target | layers | MACs −% | params −% | cosine | ms | original ms | speedup | A/A |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['target']:.2f} | {r['layers']} | {100 * r['macs_reduction']:.1f} | "
                     f"{100 * r['params_reduction']:.1f} | {r['cosine']:.4f} | {r['latency_ms']:.2f} | {r['baseline_ms']:.2f} | "
                     f"{r['speedup']:.2f}× | {r['aa_ratio']:.2f} |")
    lines += [""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--corpus" in sys.argv:  # the real-model corpus as a user runs it: benchmarks/lossy_corpus.py
        import lossy_corpus

        rest = [argument for argument in sys.argv[1:] if argument != "--corpus"]
        lossy_corpus.main(["--pass", "factorize", "--tag", "lossy_corpus_factorize", *rest])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.1,0.2,0.3")
    parser.add_argument("--svd-targets", default="0.1,0.2")
    # synthetic images are cheap to draw: held-out cosines over 16 vary less than over 8; more
    # calibration images cost the pass time (the refit runs the model once per layer and image)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--latency-targets", default="0.1,0.2")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--rank-multiple", type=int, default=16)
    parser.add_argument("--conv", default="auto", help="the factorize pass's conv option (channel, input, auto…)")
    parser.add_argument("--pre", default="opset,cleanup,fuse", help="lossless passes run first; their result is the baseline")
    parser.add_argument("--models", default="det,rec,transformer")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",") if t]
    svd_targets = [float(t) for t in args.svd_targets.split(",") if t]
    latency_targets = [float(t) for t in args.latency_targets.split(",") if t]
    variants = [("svd", svd_targets), ("data", targets), ("data/latency", latency_targets)]
    pre = [name for name in args.pre.split(",") if name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    folder = fetch_models(cache_dir())
    for key in args.models.split(","):
        if key in ("det", "rec"):
            label = f"PP-OCRv4 {key}"
            model = onnx.load(str(folder / PP_OCR_MODELS[label][0]))
            calibration, held_out = ocr_inputs(key, args.calibration, 0), ocr_inputs(key, args.held_out, 1)
        else:
            label = "Encoder 384x6"
            model, make_inputs = transformer_model(384, 6, 64)
            calibration, held_out = make_inputs(args.calibration, 0), make_inputs(args.held_out, 1)
        if pre:
            model = graphopt.optimize(model, passes=pre, verify="off").model
        rows += bench(label, model, calibration, held_out, variants, args.latency_runs, args.rank_multiple, args.conv)
        write(rows, out)  # after each model, so a long run leaves what it measured


def write(rows: list[dict], out: Path) -> None:
    plots = plot(rows, out)
    command = ("python benchmarks/factorize.py " + " ".join(sys.argv[1:])).strip()
    (out / "factorize.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    (out / "factorize.md").write_text(to_markdown(rows, command, plots))
    print(to_markdown(rows, command, plots), flush=True)


if __name__ == "__main__":
    main()
