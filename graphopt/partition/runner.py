"""Running a partitioned model pipelined: each stage in its own worker, results in order.

`run(manifest, inputs)` streams `{input name: array}` samples through the stages and yields
one `{output name: array}` per sample, in order. Backends:

- `local`: one process per stage on this machine, connected by bounded multiprocessing
  queues that carry descriptors; the tensors themselves travel in shared memory
  (`graphopt.partition.shared_tensors`). Every get and put has a timeout; the driver watches the workers between gets, so a
  worker that dies or raises ends the run with a PipelineError naming the stage (within a
  second or so), and a run that makes no progress for `timeout` seconds ends the same way.
- `ray` (extra `graphopt[ray]`): each stage a Ray actor; see `graphopt.partition.ray_backend`.

Outputs already yielded were complete results for their samples; an error ends the
iteration, so a caller that collects all results never mistakes a partial run for a whole.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from graphopt.errors import GraphoptError, UsageError, first_line
from graphopt.partition.manifest import load_manifest
from graphopt.partition.shared_tensors import pack, remove_leftovers, unpack

__all__ = ["run", "PipelineError", "BACKENDS", "stage_session"]

BACKENDS = ("local", "ray")
_POLL_SECONDS = 0.1
_DEFAULT_TIMEOUT = 300.0


class PipelineError(GraphoptError):
    """A stage worker died, raised, or stalled; `stage` is its index (None: the driver's side)."""

    exit_code = 3

    def __init__(self, message: str, *, stage: int | None = None, path: str | None = None):
        super().__init__(message, path=path)
        self.stage = stage


def run(
    manifest: str | os.PathLike | dict,
    inputs: Iterable[dict[str, np.ndarray]],
    *,
    backend: str = "local",
    threads: int | None = None,
    providers: list[str] | None = None,
    queue_size: int = 2,
    timeout: float = _DEFAULT_TIMEOUT,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the model's outputs for each input sample, in order.

    `manifest`: the path of `manifest.json` (or its folder), or the loaded dict with a
    `"folder"` key naming where the stage files are. `threads`/`providers` override the
    manifest's runtime settings for every stage. `queue_size`: samples waiting between two
    stages. `timeout`: seconds without progress before the run is declared stalled.
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

        results = run_on_ray(files, inputs, settings, in_flight=max(queue_size, 1) * len(files), timeout=timeout)
    else:
        results = _run_local(files, inputs, settings, queue_size=queue_size, timeout=timeout)
    for values in results:
        yield {name: values[name] for name in outputs}


def stage_session(model, threads: int, providers: list[str]):
    """The onnxruntime session a stage worker runs: graph optimizations on, as deployed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=providers)


def _run_local(files, inputs, settings, *, queue_size: int, timeout: float) -> Iterator[dict]:
    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold ORT threads
    links = [context.Queue(maxsize=max(queue_size, 1)) for _ in range(len(files) + 1)]
    stop = context.Event()
    prefix = f"graphopt_{uuid.uuid4().hex[:8]}_"  # this run's shared-memory blocks
    workers = [
        context.Process(target=_stage_worker, name=f"graphopt-stage-{index}", daemon=True,
                        args=(index, str(path), settings["threads"], settings["providers"], links[index], links[index + 1],
                              stop, prefix))
        for index, path in enumerate(files)
    ]
    for worker in workers:
        worker.start()
    feeder_errors: list[str] = []
    feeder = threading.Thread(target=_feed, args=(inputs, links[0], stop, feeder_errors, prefix), daemon=True)
    feeder.start()
    try:
        expected, last_progress = 0, time.monotonic()
        while True:
            try:
                item = links[-1].get(timeout=_POLL_SECONDS)
            except queue.Empty:
                _check_workers(workers, feeder_errors)
                if time.monotonic() - last_progress > timeout:
                    raise PipelineError(f"no result for {timeout:g} s: the pipeline stalled") from None
                continue
            kind = item[0]
            if kind == "error":
                raise PipelineError(f"stage {item[1]} failed: {item[2]}", stage=item[1])
            if kind == "end":
                if item[1] != expected:
                    raise PipelineError(f"the pipeline ended after {expected} of {item[1]} samples")
                return
            if item[1] != expected:  # a FIFO chain cannot reorder; if it did, say so rather than mislabel
                raise PipelineError(f"result {item[1]} arrived where {expected} was due")
            expected, last_progress = expected + 1, time.monotonic()
            yield unpack(item[2])
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=2)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=2)
        feeder.join(timeout=2)
        for link in links:
            link.cancel_join_thread()
            link.close()
        remove_leftovers(prefix)


def _check_workers(workers, feeder_errors) -> None:
    if feeder_errors:
        raise PipelineError(f"reading the inputs failed: {feeder_errors[0]}")
    for index, worker in enumerate(workers):
        if worker.exitcode not in (None, 0):
            code = worker.exitcode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise PipelineError(f"stage {index} worker {how}", stage=index)


def _feed(inputs, link, stop, errors: list[str], prefix: str) -> None:
    """The driver's feeder thread: every sample into the first queue, then the end marker."""
    count = 0
    try:
        for sample in inputs:
            arrays = {name: np.asarray(value) for name, value in sample.items()}
            if not _put(link, ("data", count, pack(arrays, f"{prefix}in_{count}")), stop):
                return
            count += 1
    except Exception as error:  # the caller's iterable raised: the run must end, not hang
        errors.append(first_line(error))
        return
    _put(link, ("end", count), stop)


def _put(link, item, stop) -> bool:
    """Puts with a timeout, again and again until it fits or the run stops; False if it stopped."""
    while not stop.is_set():
        try:
            link.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _stage_worker(index, path, threads, providers, inbox, outbox, stop, prefix) -> None:
    """One stage: its own session; takes items from `inbox`, runs them, passes them on."""
    parent = os.getppid()
    try:
        session = stage_session(path, threads, providers)
        wanted = [value.name for value in session.get_inputs()]
        produced = [value.name for value in session.get_outputs()]
    except Exception as error:
        _put(outbox, ("error", index, f"cannot load {Path(path).name}: {first_line(error)}"), stop)
        return
    while not stop.is_set() and os.getppid() == parent:
        try:
            item = inbox.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue
        if item[0] != "data":  # the end marker, or an upstream error: pass it on and finish
            _put(outbox, item, stop)
            return
        try:
            given = unpack(item[2])
            missing = [name for name in wanted if name not in given]
            if missing:
                raise KeyError(f"no value for input {', '.join(missing)}")
            values = session.run(produced, {name: given[name] for name in wanted})
        except Exception as error:
            _put(outbox, ("error", index, first_line(error)), stop)
            return
        if not _put(outbox, ("data", item[1], pack(dict(zip(produced, values)), f"{prefix}{index}_{item[1]}")), stop):
            return
