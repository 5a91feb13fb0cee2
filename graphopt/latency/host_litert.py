"""The `host-litert` latency backend's timer: each model as a LiteRT flatbuffer, XNNPACK, 1 thread.

Each ONNX model is converted by onnx2tf's direct writer (float32, as `--emit tflite` does) and
timed in LiteRT's interpreter on this machine, alternating between the models round after
round, CPU time of the calling thread (a 1-thread interpreter runs in it). This is the
latency a TFLite deployment sees on an x86 host; on a phone, use a device backend plugin.
A QDQ (int8) ONNX model is converted as onnx2tf lowers it, which need not be the int8 kernels
a calibrated `--emit tflite --emit-precision int8` flatbuffer gets.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx

__all__ = ["interleaved_litert_medians"]


def interleaved_litert_medians(models: list, feeds: list[dict], seconds: float = 0.3, rounds: int = 3) -> list[float]:
    from ai_edge_litert.interpreter import Interpreter

    from graphopt.emit.tflite import convert_to_tflite, prepare_interpreter

    runners = []
    for model, feed in zip(models, feeds):
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        flatbuffer = convert_to_tflite(proto, "fp32").flatbuffer
        interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
        prepare_interpreter(interpreter, proto, {name: np.asarray(value) for name, value in feed.items()})
        runners.append(interpreter)
    for runner in runners:
        runner.invoke()  # warm-up
    start = time.thread_time()
    for runner in runners:
        runner.invoke()
    once = max(time.thread_time() - start, 1e-6)
    runs = int(min(max(seconds / once / max(rounds, 1), 3), 200))
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(max(rounds, 1)):
        for index, runner in enumerate(runners):
            for _ in range(runs):
                begin = time.thread_time()
                runner.invoke()
                times[index].append((time.thread_time() - begin) * 1e3)
    return [statistics.median(t) for t in times]
