"""Deployment targets side by side: ORT fp32/int8/fp16, `.ort`, LiteRT fp32/fp16/int8, on this host.

    python benchmarks/targets.py [--out benchmarks/results] [--models det,rec,cls,demo,cnn,encoder] [--seconds 2]
                                 [--variants "LiteRT int8,LiteRT int8-mixed"]

Models: PP-OCRv4 det/rec and PP-OCR cls (from the rapidocr-onnxruntime 1.4.4 wheel, `common.fetch_models`,
or `$GRAPHOPT_MODELS` holding the .onnx files; inputs fixed at the shapes of `common.PP_OCR_MODELS`,
opset 13), the demo model (`examples/demo`), the torch MobileNet-style CNN and a BERT-style
encoder built as `tests/torch_models.py` builds them. Every variant starts from the same
`opset,cleanup,fuse` float32 model:

- ORT fp32: that model; ORT int8: `quantize --latency-on none` (int8 wherever the budget cos=0.99
  allows: what an ARM phone with dot-product int8 wants; on this AVX2-without-VNNI host int8 is
  often slower); ORT fp16: the `fp16` pass (accuracy and size; its latency here only shows it is
  not faster on x86); ORT fp16 + compact: then the `compact` pass (node names dropped, inner
  tensors renamed, default attributes dropped: the smallest file);
- .ort: `--emit ort` of the fp32 model, run in onnxruntime;
- LiteRT fp32 / fp16 / int8 / int8-mixed: `--emit tflite` at each precision, run in ai_edge_litert's
  interpreter (XNNPACK, 1 thread).

`--variants` runs only those (and ORT fp32, the baseline of every ratio) and puts their rows into
the results already written, in place of the same model's and variant's earlier row.

Data: synthetic text images (`text_images.py`) for PP-OCR, random images for the demo and the
CNN, random token ids for the encoder: 16 calibration samples, 4 others for evaluation.
Latency: one inference, CPU time of the calling thread, 1 thread, every variant of a model
alternated round after round (5 rounds, `--seconds` in all per variant), medians, ratio to ORT
fp32 of the same run. Cosine: worst output against ORT fp32 on the evaluation samples. Bytes:
the file as written, and its ratio to ORT fp32's; float bytes: the float weights and Constant
values alone (what fp16 halves; the rest is graph structure). Energy: the report's relative proxy of the ONNX variants, ratio to fp32.
Writes targets.{md,json}; a variant that fails says why in its row.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import graphopt
from common import PP_OCR_MODELS, fetch_models
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import make_session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import torch_models  # noqa: E402
from text_images import text_images  # noqa: E402

KIND = {"PP-OCRv4 det": "det", "PP-OCRv4 rec": "rec", "PP-OCR cls": "cls"}


def load_models(wanted: list[str]) -> dict[str, tuple[onnx.ModelProto, dict, dict]]:
    """label -> (float model with static inputs, calibration, evaluation)."""
    found = {}
    folder = Path(os.environ["GRAPHOPT_MODELS"]) if "GRAPHOPT_MODELS" in os.environ else None
    for label, (file, shapes) in PP_OCR_MODELS.items():
        if KIND[label] not in wanted:
            continue
        folder = folder or fetch_models()
        model = onnx.load(str(folder / file))
        for value in model.graph.input:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
        images = text_images(KIND[label], 20, seed=1)
        # the outputs' declared dims made static as the inputs now are (the pipeline holds the interface fixed)
        produced = make_session(model).run(None, {"x": images[0]})
        for value, array in zip(model.graph.output, produced):
            del value.type.tensor_type.shape.dim[:]
            for size in array.shape:
                value.type.tensor_type.shape.dim.add().dim_value = size
        found[label] = (model, {"x": images[:16]}, {"x": images[16:]})
    rng = np.random.default_rng(0)
    if "demo" in wanted:
        images = rng.random((20, 1, 3, 32, 32), dtype=np.float32)
        found["demo"] = (onnx.load(str(ROOT / "examples" / "demo" / "demo.onnx")), {"image": images[:16]}, {"image": images[16:]})
    if "cnn" in wanted:
        images = np.stack([torch_models.cnn_feeds(seed=s)["image"] for s in range(20)])
        found["torch CNN"] = (torch_models.cnn("torchscript", 17), {"image": images[:16]}, {"image": images[16:]})
    if "encoder" in wanted:
        feeds = [torch_models.transformer_feeds(seed=s) for s in range(20)]
        stacked = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
        found["BERT-style encoder"] = (torch_models.transformer("torchscript", 17),
                                       {k: v[:16] for k, v in stacked.items()}, {k: v[16:] for k, v in stacked.items()})
    return found


class OrtRunner:
    def __init__(self, model):
        self.session = make_session(model, optimize=True, threads=1)

    def __call__(self, feed):
        return self.session.run(None, feed)


class OrtFormatRunner(OrtRunner):
    def __init__(self, data: bytes):
        from graphopt.emit.ort_format import ort_session
        self.session = ort_session(data)


class LitertRunner:
    def __init__(self, data: bytes, model: onnx.ModelProto):
        from ai_edge_litert.interpreter import Interpreter
        self.interpreter, self.model = Interpreter(model_content=data, num_threads=1), model

    def __call__(self, feed):
        from graphopt.emit.tflite import prepare_interpreter
        if getattr(self, "_fed", None) is not feed:  # inputs set once: the timed call is invoke() alone
            prepare_interpreter(self.interpreter, self.model, feed)
            self._fed = feed
        self.interpreter.invoke()
        return None

    def outputs(self, samples, reference):
        from graphopt.emit.tflite import restore_layout, run_tflite
        raw, _ = run_tflite(self.data, samples, self.model)
        return restore_layout(raw, reference)[0]


def bench(label, model, calibration, evaluation, seconds: float, scratch: Path, variants: set | None = None) -> list[dict]:
    passes = (["opset"] if label in KIND else []) + ["cleanup", "fuse"]
    options = {"opset": {"target": 13}} if label in KIND else {}
    base = graphopt.optimize(model, passes=passes, options=options, calibration=calibration, inputs=evaluation)
    fp32 = base.model
    source = scratch / f"{label.replace(' ', '_')}.onnx"
    onnx.save(fp32, source)
    samples = [{k: v[i] for k, v in evaluation.items()} for i in range(len(next(iter(evaluation.values()))))]
    names = [v.name for v in fp32.graph.output]
    reference = [dict(zip(names, OrtRunner(fp32)(s))) for s in samples]
    rows, runners = [], {}

    def add(variant, build):
        if variants and variant not in variants and variant != "ORT fp32":
            return
        started = time.perf_counter()
        row = {"model": label, "variant": variant}
        try:
            runner, data, outputs, extra = build()
            row.update(bytes=len(data), seconds_to_build=round(time.perf_counter() - started, 1), **extra)
            row["cosine"] = min(output_metrics(np.concatenate([np.ravel(r[n]) for r in reference]).astype(np.float64),
                                               np.concatenate([np.ravel(o[n]) for o in outputs]).astype(np.float64))["cosine"]
                                for n in names if reference[0][n].dtype.kind == "f")
            runners[variant] = runner
        except Exception as error:  # a variant a target refuses: its row says why
            row["error"] = " ".join(str(error).split())[:200]
        rows.append(row)

    def onnx_variant(model_proto, summary):
        runner = OrtRunner(model_proto)
        outputs = [dict(zip(names, runner(s))) for s in samples]
        return runner, model_proto.SerializeToString(), outputs, {"energy_pj": summary["energy_proxy"]["total_pj"],
                                                                   "float_bytes": float_tensor_bytes(model_proto)}

    add("ORT fp32", lambda: onnx_variant(fp32, base.report["output"]))

    def quantized():
        result = graphopt.optimize(fp32, passes=["quantize"], calibration=calibration, inputs=evaluation, latency_on="none")
        return onnx_variant(result.model, result.report["output"])
    add("ORT int8 (latency-on none)", quantized)

    def half(passes=("fp16",)):
        result = graphopt.optimize(fp32, passes=list(passes), calibration=calibration, inputs=evaluation)
        for entry in result.report["passes"]:
            if entry["status"] != "accepted":
                raise RuntimeError(f"{entry['name']} pass: {entry['details'].get('reason', entry['status'])}")
        return onnx_variant(result.model, result.report["output"])
    add("ORT fp16 (accuracy; not faster on x86)", half)
    add("ORT fp16 + compact (names shortened)", lambda: half(("fp16", "compact")))

    def ort_format():
        report = graphopt.optimize_to_file(str(source), scratch / "m.ort", passes=["cleanup"], inputs=evaluation, emit="ort")
        data = (scratch / "m.ort").read_bytes()
        runner = OrtFormatRunner(data)
        return runner, data, [dict(zip(names, runner(s))) for s in samples], {"verified": report["emit"]["verification"]["ok"]}
    add(".ort (ORT Mobile format)", ort_format)

    for precision in ("fp32", "fp16", "int8", "int8-mixed"):
        def litert(precision=precision):
            out = scratch / f"m.{precision}.tflite"
            report = graphopt.optimize_to_file(str(source), out, passes=["cleanup"], inputs=evaluation, calibration=calibration,
                                               emit="tflite", emit_precision=precision)
            data = out.read_bytes()
            runner = LitertRunner(data, fp32)
            runner.data = data
            extra = {"verified": report["emit"]["verification"]["ok"], "layout": report["emit"].get("layout")}
            if "mixed_precision" in report["emit"]:
                extra["mixed_precision"] = report["emit"]["mixed_precision"]
            return runner, data, runner.outputs(samples, reference), extra
        add(f"LiteRT {precision}", litert)

    timings = interleaved({variant: runner for variant, runner in runners.items()}, samples[0], seconds)
    for row in rows:
        if row["variant"] in timings:
            row["median_ms"] = round(timings[row["variant"]], 4)
            row["latency_vs_ort_fp32"] = round(timings[row["variant"]] / timings["ORT fp32"], 3)
        if "energy_pj" in row:
            row["energy_vs_fp32"] = round(row["energy_pj"] / rows[0]["energy_pj"], 3)
        if "bytes" in row and "bytes" in rows[0]:
            row["bytes_vs_fp32"] = round(row["bytes"] / rows[0]["bytes"], 4)
        if "float_bytes" in row and rows[0].get("float_bytes"):
            row["float_bytes_vs_fp32"] = round(row["float_bytes"] / rows[0]["float_bytes"], 4)
    return rows


def float_tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the float32/float16 weights and Constant values: what a float16 conversion can halve
    (the rest of the file is graph structure: names, attributes, integer shape data)."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in tensors if t.data_type in floats)


def interleaved(runners: dict, feed: dict, seconds: float, rounds: int = 5) -> dict[str, float]:
    for runner in runners.values():
        runner(feed)
    times = {variant: [] for variant in runners}
    for _ in range(rounds):
        for variant, runner in runners.items():
            deadline = time.perf_counter() + seconds / rounds
            while time.perf_counter() < deadline or len(times[variant]) < 3:
                begin = time.thread_time()
                runner(feed)
                times[variant].append((time.thread_time() - begin) * 1e3)
    return {variant: statistics.median(values) for variant, values in times.items()}


def write(rows: list[dict], out: Path, command: str, load_at_start: float, merge: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    load = f"1-minute load average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at this write ({os.cpu_count()} cores)"
    header = [f"`{command}`", "", load]
    if merge and (out / "targets.json").is_file():
        # the earlier run's baseline row stays: the earlier rows' ratios are to it, the new rows' to this run's
        new = {(row["model"], row["variant"]): row for row in rows if row["variant"] != "ORT fp32"}
        earlier = (out / "targets.md").read_text().splitlines()
        header = [*earlier[2:earlier.index(next(line for line in earlier if line.startswith("| model")))],
                  f"Rows {', '.join(sorted({v for _, v in new}))} of {', '.join(sorted({m for m, _ in new}))} rerun: " + " ".join(header)]
        old = json.loads((out / "targets.json").read_text())
        rows = [new.pop((row["model"], row["variant"]), row) for row in old]
        for row in new.values():  # a variant the earlier run had not: after its model's last row
            last = max((i for i, have in enumerate(rows) if have["model"] == row["model"]), default=len(rows) - 1)
            rows.insert(last + 1, row)
    (out / "targets.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    lines = ["# Deployment targets on this host (1 thread)", "", *header, "",
             "| model | variant | median ms | × ORT fp32 | cosine | bytes | bytes × fp32 | float bytes × fp32 | energy × fp32 | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        note = row.get("error", "") or ("verified" if row.get("verified") else "")
        if row.get("mixed_precision"):
            mixed = row["mixed_precision"]
            note += f" ({mixed['int8_nodes']} of {mixed['nodes']} nodes int8)"
        lines.append(f"| {row['model']} | {row['variant']} | {row.get('median_ms', '')} | {row.get('latency_vs_ort_fp32', '')} | "
                     f"{round(row['cosine'], 6) if 'cosine' in row else ''} | {row.get('bytes', '')} | {row.get('bytes_vs_fp32', '')} | "
                     f"{row.get('float_bytes_vs_fp32', '')} | {row.get('energy_vs_fp32', '')} | {note} |")
    (out / "targets.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--models", default="det,rec,cls,demo,cnn,encoder")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per variant, in all")
    parser.add_argument("--variants", help="only these variants (comma-separated; ORT fp32 always), merged into the results")
    args = parser.parse_args()
    rows, load_at_start = [], os.getloadavg()[0]
    command = "python benchmarks/targets.py " + shlex.join(sys.argv[1:])
    variants = set(args.variants.split(",")) if args.variants else None
    with tempfile.TemporaryDirectory(prefix="graphopt-targets-") as scratch:
        for label, (model, calibration, evaluation) in load_models(args.models.split(",")).items():
            print(f"{label} ...", flush=True)
            rows += bench(label, model, calibration, evaluation, args.seconds, Path(scratch), variants)
            if not variants:  # a whole run is written as it goes; a partial one is merged once, at the end
                write(rows, Path(args.out), command, load_at_start)
    if variants:
        write(rows, Path(args.out), command, load_at_start, merge=True)
    for row in rows:
        print({k: v for k, v in row.items() if k not in ("layout",)})


if __name__ == "__main__":
    main()
