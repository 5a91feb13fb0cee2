"""onnxruntime sessions for verification.

Both the reference and the candidate run with ORT's graph optimizations disabled: the verifier
judges graphopt's rewrite, not ORT's, and an ORT fusion must neither hide nor cause a mismatch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from graphopt.errors import first_line
from graphopt.external_data import read_external, write_with_external_data
from graphopt.proto_walk import copy_model, iter_tensors, serialized_bytes, serialized_too_big
from graphopt.verify.feeds import split_samples

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["make_session", "run_samples", "stacked_outputs", "SessionError"]

# onnxruntime is imported where a session is made: `graphopt passes` and `--help`, which load
# every plugin and so this module, must start without it.


class SessionError(Exception):
    """onnxruntime could not load or run a model; the message is ORT's first line."""


def make_session(model: onnx.ModelProto | bytes | str | os.PathLike, *, optimize: bool = False, threads: int = 0):
    """An ORT session (or one that feeds external weights itself: same `run` and `get_inputs`).

    `model`: a proto, its serialised bytes, or a path. Optimizations off unless `optimize`;
    `threads` 0 leaves ORT's default thread count, its pool not spinning. Raises SessionError.
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 4  # fatal only: failures reach the user as our one-line error
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    else:
        # ORT's default pool (a thread per core) spin-waits between ops, which a process's CPU
        # time counts: on a 2-core host a verifying session of PP-OCR rec took 41 ms of CPU to
        # create and 35 a run, against 16 and 21 without spinning, for the same wall time and the
        # same outputs. Sessions that time a model set `threads` and keep ORT's behaviour.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        if isinstance(model, onnx.ModelProto):
            external = [t for t in model.graph.initializer if onnx.external_data_helper.uses_external_data(t)]
            data = None if external else serialized_bytes(model)  # sizing it first would serialise it twice
            if data is None and (not external or serialized_too_big(model)):
                return _session_from_disk(model, options)
            if external:
                return _session_with_external_weights(model, external, options, optimize)
            model = data
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types without a common base
        raise SessionError(first_line(error, limit=400)) from error


def _session_with_external_weights(model: onnx.ModelProto, external: list[onnx.TensorProto], options, optimize: bool):
    """A session over a model whose weights stay in files (by absolute path, which ORT refuses to read).

    Unoptimized, the weights are fed as inputs on every run (`_FeedingSession`); optimizing
    needs them as initializers (prepacking, fusions), which ORT copies. External tensors
    elsewhere (Constant nodes, bodies) are given back relative to their folder.
    """
    import onnxruntime as ort
    elsewhere = [t for t in iter_tensors(model) if onnx.external_data_helper.uses_external_data(t)]
    if len(elsewhere) > len(external):
        model = copy_model(model)  # weights are references here: the copy is small
        names = {t.name for t in external}
        for tensor in iter_tensors(model):
            if onnx.external_data_helper.uses_external_data(tensor) and tensor.name not in names:
                location = next(entry for entry in tensor.external_data if entry.key == "location")
                folder, location.value = str(Path(location.value).parent), Path(location.value).name
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    if not optimize:
        return _session_feeding(model, external, options)
    mapped = [ort.OrtValue.ortvalue_from_numpy(read_external(tensor)) for tensor in external]
    options.add_external_initializers([tensor.name for tensor in external], mapped)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _FeedingSession:
    """A session that feeds the weights kept in files as inputs on every run, mapped, never copied.

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


def _session_feeding(model: onnx.ModelProto, spilled: list[onnx.TensorProto], options) -> _FeedingSession:
    import onnxruntime as ort
    names = {tensor.name for tensor in spilled}
    as_inputs = onnx.ModelProto()
    as_inputs.CopyFrom(model)  # the spilled weights are references: the copy is small
    kept = [tensor for tensor in as_inputs.graph.initializer if tensor.name not in names]
    del as_inputs.graph.initializer[:]
    as_inputs.graph.initializer.extend(kept)
    declared = {value.name for value in as_inputs.graph.input}
    as_inputs.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in spilled if t.name not in declared)
    session = ort.InferenceSession(as_inputs.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _FeedingSession(session, {tensor.name: read_external(tensor) for tensor in spilled})


def _session_from_disk(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    import onnxruntime as ort
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
