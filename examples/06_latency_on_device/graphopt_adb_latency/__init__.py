"""A graphopt latency backend that times on an Android phone over `adb shell`.

Two backends, chosen with `--latency-on`:
- `adb-ort`: the ONNX model and one input sample (`test_data_set_0/input_N.pb`) pushed to the
  phone and timed by onnxruntime's `onnxruntime_perf_test` (1 thread, CPU provider); the P50
  latency it prints is the answer.
- `adb-litert`: the model converted to a LiteRT flatbuffer here (`graphopt[tflite]`), pushed,
  and timed by TensorFlow Lite's `benchmark_model` (XNNPACK, 1 thread; it feeds random inputs);
  its `Inference (avg)` is the answer.

Set `GRAPHOPT_ADB` (default `adb`; add `-s SERIAL` to pick a phone), `GRAPHOPT_DEVICE_DIR`
(default `/data/local/tmp/graphopt`), and the two tools' paths on the phone,
`GRAPHOPT_PERF_TEST` and `GRAPHOPT_BENCHMARK_MODEL` (defaults under `/data/local/tmp`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import onnx
import onnx.numpy_helper

import graphopt

BACKENDS = ("adb-ort", "adb-litert")


@graphopt.hookimpl
def graphopt_latency_backends():
    return list(BACKENDS)


@graphopt.hookimpl
def graphopt_measure_latency(model_path, inputs, settings):
    if settings["backend"] == "adb-ort":
        return {"median_ms": _time_with_perf_test(model_path, inputs, settings)}
    if settings["backend"] == "adb-litert":
        return {"median_ms": _time_with_benchmark_model(model_path, settings)}
    return None


def _adb(*arguments: str) -> str:
    command = shlex.split(os.environ.get("GRAPHOPT_ADB", "adb")) + list(arguments)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return done.stdout


def _device_dir() -> str:
    return os.environ.get("GRAPHOPT_DEVICE_DIR", "/data/local/tmp/graphopt")


def _time_with_perf_test(model_path: str, inputs: dict, settings: dict) -> float:
    model = onnx.load(model_path, load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="graphopt-adb-") as folder:
        bundle = Path(folder) / "model"
        (bundle / "test_data_set_0").mkdir(parents=True)
        onnx.save_model(onnx.load(model_path), str(bundle / "model.onnx"))
        declared = [value.name for value in model.graph.input if value.name in inputs]
        for index, name in enumerate(declared):  # perf_test feeds input_N.pb in the model's input order
            tensor = onnx.numpy_helper.from_array(inputs[name], name)
            (bundle / "test_data_set_0" / f"input_{index}.pb").write_bytes(tensor.SerializeToString())
        remote = f"{_device_dir()}/model"
        _adb("shell", f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(_device_dir())}")
        _adb("push", str(bundle), _device_dir())
        tool = os.environ.get("GRAPHOPT_PERF_TEST", "/data/local/tmp/onnxruntime_perf_test")
        output = _adb("shell", f"{tool} -e cpu -m times -r {int(settings['runs'])} -x {int(settings['threads'])} "
                               f"{shlex.quote(remote + '/model.onnx')}")
    found = re.search(r"P50 Latency:\s*([0-9.eE+-]+)\s*s", output)
    if found:
        return float(found.group(1)) * 1e3
    found = re.search(r"Average inference time cost:\s*([0-9.eE+-]+)\s*ms", output)
    if found:
        return float(found.group(1))
    raise RuntimeError(f"onnxruntime_perf_test printed no latency: {output.strip()[-300:]}")


def _time_with_benchmark_model(model_path: str, settings: dict) -> float:
    from graphopt.emit.tflite import convert_to_tflite

    with tempfile.TemporaryDirectory(prefix="graphopt-adb-") as folder:
        flatbuffer = Path(folder) / "model.tflite"
        flatbuffer.write_bytes(convert_to_tflite(onnx.load(model_path), "fp32").flatbuffer)
        remote = f"{_device_dir()}/model.tflite"
        _adb("shell", f"mkdir -p {shlex.quote(_device_dir())}")
        _adb("push", str(flatbuffer), remote)
        tool = os.environ.get("GRAPHOPT_BENCHMARK_MODEL", "/data/local/tmp/benchmark_model")
        output = _adb("shell", f"{tool} --graph={shlex.quote(remote)} --num_threads={int(settings['threads'])} "
                               f"--num_runs={int(settings['runs'])} --warmup_runs={int(settings['warmup'])} --use_xnnpack=true")
    found = re.search(r"Inference \(avg\):\s*([0-9.eE+-]+)", output)
    if not found:
        raise RuntimeError(f"benchmark_model printed no latency: {output.strip()[-300:]}")
    return float(found.group(1)) / 1e3  # microseconds
