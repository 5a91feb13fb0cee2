"""onnxruntime sessions for verification.

Both the reference and the candidate run with ORT's graph optimizations disabled: the verifier
judges graphopt's rewrite, not ORT's, and an ORT fusion must neither hide nor cause a mismatch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.errors import first_line
from graphopt.external_data import read_external, spilled_initializers
from graphopt.model_io import external_data_dir, serialized_too_big, write_with_external_data
from graphopt.verify.feeds import split_samples

__all__ = ["make_session", "run_samples", "stacked_outputs", "SessionError"]


class SessionError(Exception):
    """onnxruntime could not load or run a model; the message is ORT's first line."""


def make_session(model: onnx.ModelProto | str | os.PathLike, *, optimize: bool = False, threads: int = 0):
    """An ORT session (or one that feeds spilled weights itself: same `run` and `get_inputs`).

    Optimizations off unless `optimize`; `threads` 0 leaves ORT's default. Raises SessionError.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 4  # fatal only: failures reach the user as our one-line error
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        if isinstance(model, onnx.ModelProto):
            if serialized_too_big(model):
                return _session_from_disk(model, options)
            folder = external_data_dir(model)
            if folder is not None:
                # Weights still in the input's data files: ORT reads them from there, in place.
                options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
            spilled = spilled_initializers(model)
            if spilled and not optimize:
                return _session_feeding_spilled(model, spilled, options)
            # Weights a pass spilled live outside that folder, which ORT refuses to read from.
            # Optimizing needs them as initializers (prepacking, fusions): ORT copies them.
            mapped = [ort.OrtValue.ortvalue_from_numpy(read_external(tensor, None)) for tensor in spilled]
            if spilled:
                options.add_external_initializers([tensor.name for tensor in spilled], mapped)
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types without a common base
        raise SessionError(first_line(error, limit=400)) from error


class _FeedingSession:
    """A session that feeds the spilled weights as inputs on every run, mapped, never copied.

    Handed over as initializers, ORT copies them (a second 1.7 GB on the 2.5 GiB benchmark
    model, at the peak of the run); fed as inputs, it reads the mapped pages. Only for
    unoptimized sessions: as inputs they are not constants ORT could prepack or fuse.
    """

    def __init__(self, session: ort.InferenceSession, weights: dict[str, np.ndarray]):
        self._session, self._weights = session, weights

    def run(self, output_names, input_feed, run_options=None):
        return self._session.run(output_names, {**input_feed, **self._weights}, run_options)

    def get_inputs(self):
        return [value for value in self._session.get_inputs() if value.name not in self._weights]

    def __getattr__(self, name):
        return getattr(self._session, name)


def _session_feeding_spilled(model: onnx.ModelProto, spilled: list[onnx.TensorProto], options) -> _FeedingSession:
    names = {tensor.name for tensor in spilled}
    as_inputs = onnx.ModelProto()
    as_inputs.CopyFrom(model)  # the spilled weights are references: the copy is small
    kept = [tensor for tensor in as_inputs.graph.initializer if tensor.name not in names]
    del as_inputs.graph.initializer[:]
    as_inputs.graph.initializer.extend(kept)
    declared = {value.name for value in as_inputs.graph.input}
    as_inputs.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in spilled if t.name not in declared)
    session = ort.InferenceSession(as_inputs.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _FeedingSession(session, {tensor.name: read_external(tensor, None) for tensor in spilled})


def _session_from_disk(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    # Over 2 GiB a model cannot be serialised in one piece; ORT reads it back with its data.
    with tempfile.TemporaryDirectory(prefix="graphopt-verify-") as folder:
        path = Path(folder) / "model.onnx"
        write_with_external_data(model, path, "model.onnx.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_samples(
    session: ort.InferenceSession, samples: list[dict[str, np.ndarray]], outputs: list[str] | None = None
) -> list[dict[str, np.ndarray]]:
    """Runs every sample; returns one `{output name: array}` per sample."""
    names = outputs or [output.name for output in session.get_outputs()]
    results = []
    for sample in samples:
        try:
            values = session.run(names, sample)
        except Exception as error:
            raise SessionError(first_line(error, limit=400)) from error
        results.append(dict(zip(names, values)))
    return results


def stacked_outputs(model: onnx.ModelProto, samples: dict[str, np.ndarray], *, optimize: bool = False) -> dict[str, np.ndarray]:
    """Each output of `model` over all `samples` (`{input: (N, *shape)}`), stacked along a new first axis.

    One session at 1 thread; optimizations off (as the verifier runs) unless `optimize` (as
    deployed). Inputs of `samples` the model does not take are ignored.
    """
    session = make_session(model, optimize=optimize, threads=1)
    names = {value.name for value in model.graph.input}
    results = run_samples(session, split_samples({k: v for k, v in samples.items() if k in names}))
    return {name: np.stack([result[name] for result in results]) for name in results[0]}
