"""graphopt `quantize`'s accuracy options (equalize, rounding, weight_granularity) on PP-OCR, accuracy only.

    python benchmarks/quantize_algorithms.py [--models det,rec,cls] [--auto] [--out benchmarks/results]

Every layer is quantized (`auto=false`, `latency=off`) unless `--auto`, so that the columns show
what each algorithm does to the int8 error itself, not which layers the budget then keeps float.
Models and data as `benchmarks/quantize.py` (opset 13, but `cleanup,fuse` first: BatchNorm folded; 32 synthetic text images
to calibrate, 8 others to evaluate). Columns: worst-sample cosine and SQNR against fp32 (ORT_ENABLE_ALL),
pairs equalized, layers rounded adaptively, layers quantized, seconds the pass took. No timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx
import onnx.version_converter

import graphopt
from common import PP_OCR_MODELS, fetch_models
from graphopt.verify.metrics import output_metrics
from quantize import image_set, outputs

VARIANTS = {
    "nearest": {},
    "equalize": {"equalize": True},
    "adaptive": {"rounding": "adaptive"},
    "equalize+adaptive": {"equalize": True, "rounding": "adaptive"},
    "per-tensor": {"weight_granularity": "per-tensor"},
    "per-tensor+equalize": {"weight_granularity": "per-tensor", "equalize": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,rec,cls")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--auto", action="store_true", help="let the budget keep harmful layers float (the default pass)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = []
    for label, (file, shapes) in PP_OCR_MODELS.items():
        if label.split()[-1] not in args.models.split(","):
            continue
        model = onnx.version_converter.convert_version(onnx.load(str(fetch_models() / file)), 13)
        model = graphopt.optimize(model, passes=["cleanup", "fuse"], verify="off").model  # BatchNorm folded, as users run it
        calibration, evaluation = image_set(label, shapes["x"], 32, 0), image_set(label, shapes["x"], 8, 1)
        reference = outputs(model, evaluation)
        for name in args.variants.split(","):
            options = {"mode": "static", "latency": "off", "auto": args.auto, **VARIANTS[name]}
            started = time.perf_counter()
            result = graphopt.optimize(model, passes=["quantize"], options={"quantize": options}, calibration=calibration,
                                       inputs=evaluation, verify="off")
            details = result.report["passes"][-1].get("details", {})
            metrics = [output_metrics(r, g) for r, g in zip(reference, outputs(result.model, evaluation))]
            row = {"model": label, "variant": name, "cosine": round(min(m["cosine"] for m in metrics), 5),
                   "sqnr_db": round(min(m["sqnr_db"] for m in metrics), 2), "equalized_pairs": details.get("equalized_pairs"),
                   "adaptive_rounded": details.get("adaptive_rounded"), "quantized": details.get("quantized"),
                   "kept_float": details.get("kept_float"), "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = "python benchmarks/quantize_algorithms.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{command.strip()}`", "", "| model | variant | cosine | SQNR dB | pairs equalized | rounded | quantized | float | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['cosine']} | {r['sqnr_db']} | {r['equalized_pairs']} | {r['adaptive_rounded']} | "
              f"{r['quantized']} | {r['kept_float']} | {r['seconds']} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_auto" if args.auto else ""
    (args.out / f"quantize_algorithms{suffix}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"quantize_algorithms{suffix}.json").write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
