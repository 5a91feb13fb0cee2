"""What each node costs and what each crossing tensor weighs, measured on one real sample.

Latency is onnxruntime's own per-kernel profile of the whole model at 1 thread with graph
optimizations off (so every kernel is one of our nodes; an If/Loop/Scan kernel's time holds
its bodies'), the median over a few runs. `--by macs` counts multiply-accumulates from the
shapes the sample actually produced, so dynamic dims need no guess. Bytes are the sizes of
the tensors on that sample.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time

import numpy as np
import onnx

from graphopt.activations import iter_activations
from graphopt.errors import InputError
from graphopt.proto_walk import copy_model
from graphopt.partition.cuts import weights_read

__all__ = ["tensor_bytes", "node_latency", "node_macs", "weight_bytes_by_node", "stage_latencies"]

_PROFILE_RUNS = 5
_NAME_PREFIX = "graphopt_partition_node_"


def tensor_bytes(model: onnx.ModelProto, sample: dict[str, np.ndarray], names: list[str]) -> tuple[dict[str, int], dict[str, tuple]]:
    """`{name: bytes}` and `{name: shape}` of the named tensors on one sample (no N axis)."""
    batch = {name: value[None] for name, value in sample.items()}
    try:
        values = next(iter_activations(model, batch, names))
    except KeyError as error:
        raise InputError(f"cannot partition: {error.args[0]}") from error
    sizes = {name: _nbytes(values[name]) for name in names}
    shapes = {name: tuple(np.shape(values[name])) if isinstance(values[name], np.ndarray) else () for name in names}
    return sizes, shapes


def node_latency(model: onnx.ModelProto, sample: dict[str, np.ndarray], *, runs: int = _PROFILE_RUNS) -> list[float]:
    """Seconds each top-level node takes at 1 thread (its subgraphs included), by position."""
    named = copy_model(model)
    for position, node in enumerate(named.graph.node):
        node.name = f"{_NAME_PREFIX}{position}"
    import onnxruntime as ort  # here: `graphopt passes` loads this module and must not load onnxruntime

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    with tempfile.TemporaryDirectory(prefix="graphopt-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(named.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {value.name: sample[value.name] for value in session.get_inputs()}
        session.run(None, feeds)  # warm-up: first-run allocations are not the node's cost
        for _ in range(runs):
            session.run(None, feeds)
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    durations: dict[int, list[float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.startswith(_NAME_PREFIX) and name.endswith("_kernel_time"):
            position = int(name[len(_NAME_PREFIX):-len("_kernel_time")])
            durations.setdefault(position, []).append(event["dur"] * 1e-6)
    # The warm-up run is the first event of each node; its allocations are not the node's cost.
    return [statistics.median(durations.get(i, [0.0])[1:] or durations.get(i, [0.0])) for i in range(len(named.graph.node))]


def node_macs(model: onnx.ModelProto, shapes: dict[str, tuple]) -> list[float]:
    """Multiply-accumulates of each top-level node from measured shapes; other ops count their output elements.

    Counting elementwise work keeps a run of cheap ops from looking free to the planner.
    """
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    known = {**weights, **shapes}
    costs = []
    for node in model.graph.node:
        output = known.get(node.output[0]) if node.output else None
        first = known.get(node.input[0]) if node.input else None
        second = known.get(node.input[1]) if len(node.input) > 1 else None
        elements = math.prod(output) if output else 0
        if node.op_type == "Conv" and output and second:
            costs.append(float(elements * math.prod(second[1:])))
        elif node.op_type == "ConvTranspose" and first and second:
            costs.append(float(math.prod(first) * math.prod(second[1:])))
        elif node.op_type in ("MatMul", "Gemm") and output and first:
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            costs.append(float(elements * (first[0] if transposed else first[-1])))
        else:
            costs.append(float(elements))
    return costs


def weight_bytes_by_node(model: onnx.ModelProto) -> list[dict[str, int]]:
    """`{initializer name: bytes}` each top-level node reads (its bodies' reads of outer weights included)."""
    sizes = {t.name: _initializer_nbytes(t) for t in model.graph.initializer}
    return [{name: sizes[name] for name in names if name in sizes} for names in weights_read(model)]


def _initializer_nbytes(tensor: onnx.TensorProto) -> int:
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize if tensor.data_type != onnx.TensorProto.STRING else 1
    return math.prod(tensor.dims) * itemsize


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(item) for item in value)
    return 0


def stage_latencies(stages: list[onnx.ModelProto], sample: dict[str, np.ndarray], *, runs: int = _PROFILE_RUNS) -> list[float]:
    """Median seconds of each stage model at 1 thread with graph optimizations on (as a worker runs it),
    each fed the values the stages before it produce from `sample`."""
    from graphopt.verify.runner import make_session

    values, seconds = dict(sample), []
    for stage in stages:
        session = make_session(stage, optimize=True, threads=1)
        feeds = {value.name: values[value.name] for value in session.get_inputs()}
        names = [value.name for value in session.get_outputs()]
        outputs = session.run(names, feeds)  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(names, feeds)
            times.append(time.perf_counter() - start)
        seconds.append(statistics.median(times))
        values = dict(zip(names, outputs))
    return seconds
