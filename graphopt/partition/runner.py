"""Running a partitioned model pipelined: each stage in its own worker, results in order.

`run(manifest, inputs)` streams `{input name: array}` samples through the stages and yields
one `{output name: array}` per sample, in order. Backends:

- `local`: one process per stage on this machine, linked by rings of reused shared-memory
  slots (`graphopt.partition.local_backend`, `graphopt.partition.shared_ring`). Every wait has
  a timeout; the driver waits on the workers' process sentinels along with the results, so a
  worker that dies or raises ends the run with a PipelineError naming the stage at once, and
  a run that makes no progress for `timeout` seconds ends the same way.
- `ray` (extra `graphopt[ray]`): each stage a Ray actor; see `graphopt.partition.ray_backend`.

Outputs already yielded were complete results for their samples; an error ends the
iteration, so a caller that collects all results never mistakes a partial run for a whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from graphopt.errors import GraphoptError, UsageError
from graphopt.partition.manifest import load_manifest

__all__ = ["run", "PipelineError", "BACKENDS", "stage_session", "default_samples_per_call"]

BACKENDS = ("local", "ray")
_DEFAULT_TIMEOUT = 300.0
_SECONDS_PER_CALL = 0.4
_MAX_BYTES_PER_CALL = 64 * 2**20
_MAX_SAMPLES_PER_CALL = 16


class PipelineError(GraphoptError):
    """A stage worker died, raised, or stalled; `stage` is its index (None: the driver's side)."""

    exit_code = 3
    details = ("stage",)


def run(
    manifest: str | os.PathLike | dict,
    inputs: Iterable[dict[str, np.ndarray]],
    *,
    backend: str = "local",
    threads: int | None = None,
    providers: list[str] | None = None,
    queue_size: int = 2,
    timeout: float = _DEFAULT_TIMEOUT,
    stats: dict | None = None,
    samples_per_call: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the model's outputs for each input sample, in order.

    `manifest`: the path of `manifest.json` (or its folder), or the loaded dict with a
    `"folder"` key naming where the stage files are. `threads`/`providers` override the
    manifest's runtime settings for every stage. `queue_size`: samples waiting between two
    stages. `timeout`: seconds without progress before the run is declared stalled.
    `stats`: a dict the `local` backend fills when the run ends normally — per stage
    (`stats["stages"]`) the ms per sample in onnxruntime (`run_ms`, `run_cpu_ms`), outside it on the CPU
    (`transport_cpu_ms`), and waiting for input or for room downstream; `driver_cpu_ms`, the
    driver's own CPU per sample. `samples_per_call` (`ray` only): samples a Ray actor call
    carries (default: enough for ~0.4 s of the slowest stage by the manifest's measured costs,
    at most 16 and 64 MiB per link; 1 for a plan by MACs); more amortise Ray's per-call cost, fewer add less latency.
    """
    document, folder = load_manifest(manifest)
    if folder is None:
        raise UsageError("a manifest dict needs a 'folder' key naming where its stage files are")
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}; got '{backend}'")
    runtime = document.get("runtime", {})
    settings = {
        "threads": threads or runtime.get("threads", 1),
        "providers": providers or runtime.get("providers", ["CPUExecutionProvider"]),
    }
    files = [Path(folder) / stage["file"] for stage in document["stages"]]
    for path in files:
        if not path.is_file():
            raise UsageError("stage file named by the manifest is missing", path=str(path))
    outputs = list(document["outputs"])
    if backend == "ray":
        from graphopt.partition.ray_backend import run_on_ray

        per_call = samples_per_call or default_samples_per_call(document)
        results = run_on_ray(files, inputs, settings, in_flight=max(queue_size, 1) * len(files), timeout=timeout,
                             samples_per_call=per_call)
    else:
        from graphopt.partition.local_backend import run_local

        results = run_local(files, inputs, settings, queue_size=queue_size, timeout=timeout, stats=stats)
    for values in results:
        yield {name: values[name] for name in outputs}


def default_samples_per_call(document: dict) -> int:
    """Samples per Ray call so that one call keeps the slowest stage busy ~0.4 s (see ray_backend),
    at most 16 and at most 64 MiB through any link per call (by the manifest's per-sample bytes)."""
    costs = [stage.get("cost") for stage in document["stages"]]
    if document.get("plan", {}).get("by") != "latency" or not all(isinstance(c, (int, float)) and c > 0 for c in costs):
        return 1
    link_bytes = max((sum(value.get("bytes") or 0 for value in stage.get(side, []))
                      for stage in document["stages"] for side in ("inputs", "outputs")), default=0)
    by_bytes = _MAX_BYTES_PER_CALL // link_bytes if link_bytes else _MAX_SAMPLES_PER_CALL
    return max(1, min(_MAX_SAMPLES_PER_CALL, by_bytes, math.ceil(_SECONDS_PER_CALL / max(costs))))


def stage_session(model, threads: int, providers: list[str]):
    """The onnxruntime session a stage worker runs: graph optimizations on, as deployed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=providers)
