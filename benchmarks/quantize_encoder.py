"""graphopt `quantize` (mode=auto) against ORT `quantize_dynamic` on the outlier encoder, one run.

    python benchmarks/quantize_encoder.py [--out benchmarks/results]

Model: `tests/trait_models.py` `encoder_with_outliers(layers=6, width=384, seq=128)` (LayerNorm γ
with a few channels ×10-×30, as trained transformers have). 32 calibration and 8 held-out token
sets. Columns: median ms at 1 thread (interleaved), ratio to fp32, bytes ratio, worst-sample
cosine, seconds to quantize.
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
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import make_session
from graphopt_plugins.quantize.timing import time_models

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from torch_models import transformer_feeds  # noqa: E402
from trait_models import encoder_with_outliers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    model = encoder_with_outliers(layers=6, width=384, seq=128)
    feeds = [transformer_feeds(1, 128, 100, seed=s) for s in range(40)]
    calibration = {k: np.stack([f[k] for f in feeds[:32]]) for k in ("ids", "mask")}
    variants, seconds, details = {"fp32": model}, {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        from onnxruntime.quantization import quantize_dynamic
        source, target = Path(scratch) / "m.onnx", Path(scratch) / "d.onnx"
        onnx.save(model, source)
        for label, reduce_range in (("ort quantize_dynamic", False), ("ort quantize_dynamic reduce_range", True)):
            started = time.perf_counter()
            quantize_dynamic(str(source), str(target), per_channel=True, reduce_range=reduce_range)
            seconds[label], variants[label] = time.perf_counter() - started, onnx.load(str(target))
    started = time.perf_counter()
    result = graphopt.optimize(model, passes=["cleanup", "fuse", "quantize"], options={"fuse": {"target": "onnxruntime"}},
                               calibration=calibration, verify="off")
    label = "graphopt cleanup,fuse,quantize (auto)"
    seconds[label], variants[label] = time.perf_counter() - started, result.model
    details = result.report["passes"][-1].get("details", {})
    times = time_models(variants, feeds[32])
    rows = []
    reference = make_session(model, optimize=True, threads=1)
    for name, candidate in variants.items():
        session = make_session(candidate, optimize=True, threads=1)
        cosine = min(output_metrics(reference.run(None, f)[0], session.run(None, f)[0])["cosine"] for f in feeds[32:])
        rows.append({"variant": name, "ms": round(times[name], 3), "ratio": round(times[name] / times["fp32"], 3),
                     "bytes_ratio": round(candidate.ByteSize() / model.ByteSize(), 3), "cosine": round(cosine, 5),
                     "quantize_s": round(seconds.get(name, 0.0), 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize_encoder.json").write_text(json.dumps({"rows": rows, "mode_trials": details.get("mode_trials")}, indent=2))
    lines = ["| variant | ms | × fp32 | bytes × fp32 | worst cos | quantize s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms']} | {r['ratio']} | {r['bytes_ratio']} | {r['cosine']} | {r['quantize_s']} |" for r in rows]
    (args.out / "quantize_encoder.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + f"\nmode trials: {details.get('mode_trials')}\n")


if __name__ == "__main__":
    main()
