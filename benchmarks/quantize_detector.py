"""graphopt `quantize` (full-graph int8) against onnxruntime `quantize_static` on a YOLOv8n-width detector.

    python benchmarks/quantize_detector.py [--size 320] [--out benchmarks/results]

Model: `detector_model.yolov8n_like` (Conv-BN-SiLU, C2f, SPPF, nearest Resize, a decoding head
whose output concatenates boxes in pixels (rows 0-3) with sigmoid class scores (rows 4:)).
Data: 32 calibration and 8 evaluation images (uniform noise in [0, 1]: no trained weights, so
no natural images needed). Columns: median latency at 1 thread (interleaved), ratio to fp32,
bytes, worst-sample cosine of the box slice and of the score slice separately (a whole-output
cosine is dominated by the pixel coordinates), seconds to quantize.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import graphopt
from detector_model import yolov8n_like
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import make_session
from quantize import ort_static
from graphopt_plugins.quantize.timing import time_models


def images(count: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((count, 1, 3, size, size), dtype=np.float32)


def slice_cosines(reference: onnx.ModelProto, candidate: onnx.ModelProto, samples: np.ndarray) -> tuple[float, float]:
    ref, cand = make_session(reference, optimize=True, threads=1), make_session(candidate, optimize=True, threads=1)
    boxes, scores = [], []
    for image in samples:
        a, b = ref.run(None, {"images": image})[0], cand.run(None, {"images": image})[0]
        boxes.append(output_metrics(a[:, :4], b[:, :4])["cosine"])
        scores.append(output_metrics(a[:, 4:], b[:, 4:])["cosine"])
    return min(boxes), min(scores)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    model = yolov8n_like(size=args.size)
    calibration, evaluation = images(32, args.size, 1), images(8, args.size, 2)
    variants, seconds = {"fp32": model}, {}
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "model.onnx"
        onnx.save(model, source)
        started = time.perf_counter()
        variants["ort quantize_static (QDQ, per-channel)"] = ort_static(source, Path(scratch) / "ort.onnx",
                                                                         {"images": calibration})
        seconds["ort quantize_static (QDQ, per-channel)"] = time.perf_counter() - started
        for label, options in (("graphopt quantize (auto, full_graph)", {}),
                               ("graphopt quantize (static, full_graph=false)", {"mode": "static", "full_graph": False})):
            started = time.perf_counter()
            result = graphopt.optimize(model, passes=["cleanup", "fuse", "quantize"], options={"quantize": options},
                                       calibration={"images": calibration}, verify="off")
            seconds[label] = time.perf_counter() - started
            variants[label] = result.model
    times = time_models(variants, {"images": evaluation[0]})
    rows = []
    for label, candidate in variants.items():
        boxes, scores = slice_cosines(model, candidate, evaluation)
        rows.append({"variant": label, "ms": round(times[label], 3), "ratio": round(times[label] / times["fp32"], 3),
                     "bytes": candidate.ByteSize(), "box_cos": round(boxes, 5), "score_cos": round(scores, 5),
                     "quantize_s": round(seconds.get(label, 0.0), 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize_detector.json").write_text(json.dumps(rows, indent=2))
    lines = ["| variant | ms | × fp32 | bytes | box cos (worst) | score cos (worst) | quantize s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms']} | {r['ratio']} | {r['bytes']} | {r['box_cos']} | {r['score_cos']} | {r['quantize_s']} |"
              for r in rows]
    (args.out / "quantize_detector.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
