"""AMD Quark's ONNX quantizer on one model, run by Quark's own interpreter (not graphopt's venv).

amd-quark 0.13 pins onnx <= 1.22 while graphopt's venv has 1.23, so Quark lives in a venv of
its own and `benchmarks/anchors.py::quark_quantize` starts this script with that interpreter.
Data crosses by files: the model (.onnx), the calibration samples (.npz, `{input: (N, *shape)}`),
and, written here, one `quark_<config>.onnx` per config plus `quark.json` (seconds, error, the
custom-op domains left in the graph). Imports nothing from graphopt.

    QUARK_PYTHON benchmarks/quark_worker.py MODEL CALIB.npz OUTDIR --configs a8w8,a8w8_algo,u8s8,autosearch
        [--torch-path DIR] [--adaround-iterations 100] [--search-budget 90]

Configs, all through `quark.onnx.ModelQuantizer(QConfig)` (Quark's current API):
- `a8w8`: Quark's A8W8 preset as its docs recommend for CPU int8 (int8 symmetric activations,
  Percentile calibration, float scales, standard QDQ) with per-channel int8 weights;
- `a8w8_algo`: the same plus Quark's pre-quantization algorithm for the model family: SmoothQuant
  (alpha 0.5) when the model has MatMuls and no Conv, else CLE (cross-layer equalization);
- `u8s8`: the same with uint8 asymmetric activations (Quark's U8S8_AAWS / INT8_CNN_DEFAULT
  family: the layout onnxruntime's x86 int8 kernels prefer);
- `autosearch`: Quark's `AutoSearch` over calibration method x CLE on `a8w8` (see `auto_search`);
- `a8w8_adaround`: the same as `a8w8` plus AdaRound (Quark's torch fast-finetune) fitted on the
  calibration set at `--adaround-iterations` per layer (the preset's 1000 / 10). Not in the corpus's
  rows: even so it took 460 s on PP-OCR cls (54 layers, 16 samples) on a loaded 2-core machine.

Quark 0.13 imports torch at import time (its custom-op loader and fast-finetune); where its venv
has none, `--torch-path` (a site-packages folder holding torch) is appended to the END of
sys.path, so Quark's own onnx/onnxruntime still come first. The caller runs one config per process
and kills it past its time limit (Quark's fast-finetune swallows an in-process alarm).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path


class _Reader:
    """onnxruntime's CalibrationDataReader interface over the npz's `{input: (N, *shape)}` arrays."""

    def __init__(self, arrays: dict):
        count = len(next(iter(arrays.values())))
        self._samples = [{name: values[i, ...] for name, values in arrays.items()} for i in range(count)]
        self._next = iter(self._samples)

    def get_next(self):
        return next(self._next, None)

    def rewind(self):
        self._next = iter(self._samples)

    def __len__(self):
        return len(self._samples)


def _family_algorithm(model_path: Path):
    import onnx
    from quark.onnx import CLEConfig, SmoothQuantConfig

    ops = {node.op_type for node in onnx.load(str(model_path), load_external_data=False).graph.node}
    if "MatMul" in ops and "Conv" not in ops:
        return "SmoothQuant", SmoothQuantConfig(alpha=0.5)
    return "CLE", CLEConfig()


def make_config(name: str, model_path: Path, adaround_iterations: int):
    """(QConfig, description) for a config name."""
    from quark.onnx import AdaRoundConfig, Int8Spec, QConfig, QLayerConfig, QuantGranularity, UInt8Spec

    weights = Int8Spec(quant_granularity=QuantGranularity.Channel)
    layer = QLayerConfig(input_tensors=UInt8Spec() if name == "u8s8" else Int8Spec(), weight=weights)
    # A8W8_QCONFIG's extra options, passed as keywords (QConfig keeps **kwargs as its extra_options)
    extras = {"ForceQuantizeNoInputCheck": True, "AlignSlice": False, "FoldRelu": True, "AlignConcat": True,
              "PrintSummary": False}
    algorithms, description = [], "A8W8 (int8 sym activations, Percentile; per-channel int8 weights; QDQ)"
    if name == "a8w8_algo":
        label, algorithm = _family_algorithm(model_path)
        algorithms, description = [algorithm], f"{description} + {label}"
    elif name == "a8w8_adaround":
        algorithms = [AdaRoundConfig(num_iterations=adaround_iterations, learning_rate=0.1, early_stop=True)]
        description = f"{description} + AdaRound ({adaround_iterations} iterations per layer)"
    elif name == "u8s8":
        description = "U8S8 (uint8 asym activations, Percentile; per-channel int8 weights; QDQ)"
    elif name != "a8w8":
        raise ValueError(f"unknown Quark config {name!r}")
    return QConfig(global_config=layer, algo_config=algorithms, **extras), description


def auto_search(source: Path, arrays: dict, out: Path, target: Path, budget: float) -> str:
    """Quark's `AutoSearch` (grid, its L2 metric on the calibration samples) over calibration method
    x CLE on the A8W8 per-channel config, stopped once `budget` seconds of quantizing are spent;
    the best searched model is copied to `target`. Returns what it chose."""
    import shutil

    from quark.onnx import AutoSearch, CalibrationMethod, Config, QuantFormat, QuantizationConfig, QuantType
    from quark.onnx.quantization.auto_search.auto_search_v1 import AutoSearchConfig

    base = QuantizationConfig(calibrate_method=CalibrationMethod.Percentile, quant_format=QuantFormat.QDQ,
                              activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                              include_cle=False, print_summary=False,
                              extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "ForceQuantizeNoInputCheck": True,
                                             "AlignSlice": False, "FoldRelu": True, "AlignConcat": True})
    search = AutoSearchConfig()
    search.search_space = {"calibrate_method": [CalibrationMethod.Percentile, CalibrationMethod.MinMax, CalibrationMethod.Entropy],
                           "include_cle": [False, True]}
    search.search_metric, search.search_metric_tolerance = "L2", 1e30  # keep every searched model, pick the best below
    search.search_cache_dir = search.search_output_dir = str(out / "autosearch")
    search.search_log_path = str(out / "autosearch" / "auto_search.log")
    search.search_stop_condition = {"find_n_candidates": -1, "iteration_limit": 6, "time_limit": budget}
    reader = _Reader(arrays)
    searcher = AutoSearch(str(source), Config(global_quant_config=base), search, eval_dataloader=list(reader._samples),
                          calibration_data_reader=reader)
    candidates = searcher.search_model()
    best = min(candidates, key=lambda candidate: candidate["difference"])
    shutil.copy(best["model_path"], target)
    tried = searcher.all_configs[best["config_index"]] if best["config_index"] < len(searcher.all_configs) else {}
    chosen = ", ".join(f"{key}={getattr(value, 'name', value)}" for key, value in tried.items())
    return (f"AutoSearch over calibration {{Percentile, MinMax, Entropy}} x CLE {{off, on}} on A8W8 per-channel: "
            f"{searcher.iterations} tried in {searcher.time_consumed:.0f} s, best #{best['config_index']} {chosen} (L2 {best['difference']:.3g})")


def prepare(model_path: Path, out: Path) -> tuple[Path, str]:
    """The model Quark quantizes, and a note: per-channel QDQ needs opset >= 13, so an older model is
    first converted with Quark's own `quark.onnx.tools.convert_opset_version` (as its docs advise)."""
    import onnx
    from quark.onnx.tools.convert_opset_version import convert_opset_version

    model = onnx.load(str(model_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return model_path, ""
    converted = convert_opset_version(model, 13)
    target = out / "quark_opset13.onnx"
    onnx.save(converted, str(target))
    return target, f"opset {opset}->13 (quark.onnx.tools.convert_opset_version) first"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--configs", default="a8w8,a8w8_algo,u8s8,autosearch")
    parser.add_argument("--torch-path", help="a site-packages folder with torch, appended to sys.path")
    parser.add_argument("--adaround-iterations", type=int, default=100)
    parser.add_argument("--search-budget", type=float, default=90.0, help="seconds of quantizing for autosearch")
    args = parser.parse_args()
    if args.torch_path:
        sys.path.append(args.torch_path)
    import numpy as np
    import onnx

    start = time.perf_counter()
    from quark.onnx import ModelQuantizer

    results = {"import_seconds": time.perf_counter() - start, "onnx": onnx.__version__, "configs": {}}
    with np.load(args.calibration) as data:
        arrays = {name: data[name] for name in data.files}
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        source, results["prepared"] = prepare(args.model, args.out)
    except Exception as error:  # noqa: BLE001 - Quark then quantizes the original (per-channel may fail)
        source, results["prepared"] = args.model, f"opset conversion failed: {type(error).__name__}: {str(error)[:120]}"
    for name in args.configs.split(","):
        target = args.out / f"quark_{name}.onnx"
        row: dict = {"path": None}
        start = time.perf_counter()
        try:
            if name == "autosearch":
                row["config"] = auto_search(source, arrays, args.out, target, args.search_budget)
            else:
                config, row["config"] = make_config(name, source, args.adaround_iterations)
                ModelQuantizer(config).quantize_model(str(source), str(target), _Reader(arrays))
            produced = onnx.load(str(target), load_external_data=False)
            row["path"] = str(target)
            row["custom_domains"] = sorted({n.domain for n in produced.graph.node if n.domain not in ("", "ai.onnx")})
        except BaseException as error:  # noqa: BLE001 - a config failing on a model is a result
            traceback.print_exc()
            row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
        row["seconds"] = time.perf_counter() - start
        results["configs"][name] = row
        (args.out / "quark.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
