"""Where full-integer int8 loses a model's accuracy: LiteRT's int8 emit beside onnxruntime's simulation of it.

    python benchmarks/tflite_int8_attribution.py [--models det] [--out benchmarks/results]

onnx2tf's strict int8 writer quantizes every activation per tensor (asymmetric, min/max over the
calibration samples) and every weight per output channel. onnxruntime's `quantize_static` (QDQ,
per-channel int8 weights, asymmetric int8 activations, MinMax) is the same scheme, and it can keep
chosen nodes float (`nodes_to_exclude`): the cosine with a span of nodes kept float says how much
of the loss that span's tensors carry. Rows: the LiteRT int8 emit (`convert_to_tflite`, run in
LiteRT), the simulation with nothing float, with spans of the graph (in node order) float, and
with percentile calibration (99.999) instead of min/max. Same data as `targets.py` (16 calibration
samples, 4 evaluation samples, the `opset,cleanup,fuse` model). Writes tflite_int8_attribution.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

import graphopt
from targets import KIND, load_models

# (label, first node, last node + 1) as fractions of the node count, or explicit node indices
SPANS = {"det": [("nothing float", 0, 0), ("first half float", 0, 0.5), ("second half float", 0.5, 1.0),
                 ("first 5% float (nodes 0-8: stem, first block)", 0, 0.05), ("nodes 4-8 float (pointwise conv 2 to depthwise conv 3)", 4, 9),
                 ("nodes 0-4 float", 0, 5), ("head float (last 20%)", 0.8, 1.0)]}


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def simulated(path: Path, calibration: dict, samples: list, reference: np.ndarray, exclude: list[str], method: str = "minmax") -> float:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from graphopt.verify.runner import make_session

    class Reader(CalibrationDataReader):
        def __init__(self):
            count = len(next(iter(calibration.values())))
            self.feeds = iter([{k: v[i] for k, v in calibration.items()} for i in range(count)])

        def get_next(self):
            return next(self.feeds, None)
    out = path.with_suffix(".qdq.onnx")
    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude, extra_options={"ActivationSymmetric": False},
                    calibrate_method=CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax)
    session = make_session(onnx.load(str(out)))
    return cosine(reference, np.concatenate([np.ravel(session.run(None, s)[0]) for s in samples]))


def attribute(label: str, model, calibration: dict, evaluation: dict, scratch: Path) -> list[dict]:
    from graphopt.emit.tflite import convert_to_tflite, restore_layout, run_tflite
    from graphopt.verify.runner import make_session

    passes = (["opset"] if label in KIND else []) + ["cleanup", "fuse"]
    fp32 = graphopt.optimize(model, passes=passes, options={"opset": {"target": 13}} if label in KIND else {},
                             calibration=calibration, inputs=evaluation).model
    path = scratch / "model.onnx"
    onnx.save(fp32, path)
    samples = [{k: v[i] for k, v in evaluation.items()} for i in range(len(next(iter(evaluation.values()))))]
    session, name = make_session(fp32), fp32.graph.output[0].name
    outputs = [{name: session.run(None, s)[0]} for s in samples]
    reference = np.concatenate([np.ravel(o[name]) for o in outputs])
    rows = []
    flatbuffer = convert_to_tflite(fp32, "int8", calibration)
    got, _ = restore_layout(run_tflite(flatbuffer.flatbuffer, samples, fp32)[0], outputs)
    rows.append({"model": label, "variant": "LiteRT int8 emit (onnx2tf strict writer)", "cosine": cosine(reference, np.concatenate([np.ravel(g[name]) for g in got]))})
    names = [node.name for node in fp32.graph.node]
    for text, start, stop in SPANS.get(KIND.get(label, label), SPANS["det"][:3]):
        first, last = (int(start * len(names)), int(stop * len(names))) if stop <= 1 and isinstance(stop, float) else (start, stop)
        rows.append({"model": label, "variant": f"ORT QDQ simulation, {text}", "float_nodes": last - first,
                     "cosine": simulated(path, calibration, samples, reference, names[first:last])})
    rows.append({"model": label, "variant": "ORT QDQ simulation, nothing float, percentile 99.999 calibration", "float_nodes": 0,
                 "cosine": simulated(path, calibration, samples, reference, [], "percentile")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows, load = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        for label, (model, calibration, evaluation) in load_models(args.models.split(",")).items():
            rows += attribute(label, model, calibration, evaluation, Path(scratch))
    (args.out / "tflite_int8_attribution.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"`python benchmarks/tflite_int8_attribution.py {shlex.join(sys.argv[1:])}`; 1-minute load average {load:.2f} "
             f"at the start, {os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} cores)", "",
             "| model | variant | float nodes | cosine |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r.get('float_nodes', '')} | {r['cosine']:.4f} |" for r in rows]
    (args.out / "tflite_int8_attribution.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
