"""The `local` backend: one process per stage on this machine, linked by shared-memory rings.

Processes are started with `spawn` (the parent may hold onnxruntime threads, which `fork`
would copy half-alive). Link i carries stage i's inputs: link 0 is written by the driver,
link K is read by it (`graphopt.partition.shared_ring`). The driver is one thread, the
caller's: between results it feeds whatever samples fit and waits — on the last link, on a
slot coming back on the first, and on the workers' process sentinels at once (one
selector, registered once) — so it costs
little CPU, and a worker that dies is seen the moment it dies. A worker that raises sends an
error marker down the chain, after the results before it, and exits. Workers poll their input
every 0.1 s to notice a stopped run or a dead driver; nothing waits without a timeout.
"""

from __future__ import annotations

import multiprocessing
import os
import selectors
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from graphopt.errors import first_line
from graphopt.partition.runner import PipelineError, stage_session
from graphopt.partition.shared_ring import RingReader, RingWriter, remove_blocks

__all__ = ["run_local"]

_POLL_SECONDS = 0.1
_END = object()


def run_local(files: list[Path], inputs: Iterable[dict], settings: dict, *, queue_size: int, timeout: float,
              stats: dict | None = None) -> Iterator[dict]:
    context = multiprocessing.get_context("spawn")
    slots = max(queue_size, 1) + 1  # `queue_size` waiting, plus the one the reader is working on
    prefix = f"graphopt_{uuid.uuid4().hex[:8]}_"
    links = [(*context.Pipe(duplex=False), *context.Pipe(duplex=False)) for _ in range(len(files) + 1)]
    # each link: (data reader, data writer, freed reader, freed writer)
    stop = context.Event()
    workers = [
        context.Process(target=_stage_worker, name=f"graphopt-stage-{index}", daemon=True,
                        args=(index, str(path), settings["threads"], settings["providers"],
                              (links[index][0], links[index][3]), (links[index + 1][1], links[index + 1][2]),
                              slots, f"{prefix}{index + 1}", stop))
        for index, path in enumerate(files)
    ]
    try:
        for worker in workers:
            worker.start()
        kept = {id(links[0][1]), id(links[0][2]), id(links[-1][0]), id(links[-1][3])}
        for end in [end for link in links for end in link if id(end) not in kept]:
            end.close()  # the driver keeps only its own ends: link 0's writer, link K's reader
        writer = RingWriter(links[0][1], links[0][2], slots=slots, name=f"{prefix}0")
        reader = RingReader(links[-1][0], links[-1][3])
        try:
            yield from _drive(workers, writer, reader, iter(inputs), timeout, stats)
        except (EOFError, BrokenPipeError) as error:  # a link's other end is gone: its process died
            raise _death(workers) from error
    finally:
        stop.set()
        for worker in workers:
            if worker.pid is None:
                continue
            worker.join(timeout=2)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=2)
        for link in links:
            for end in link:
                end.close()
        remove_blocks(prefix)


def _drive(workers, writer: RingWriter, reader: RingReader, inputs: Iterator, timeout: float, stats: dict | None):
    """Feeds, collects and watches, from the caller's thread; yields owned copies of the results."""
    with selectors.DefaultSelector() as selector:  # registered once: a wait costs one syscall
        selector.register(reader.data, selectors.EVENT_READ, "result")
        selector.register(writer.freed, selectors.EVENT_READ, "freed")
        for index, worker in enumerate(workers):
            selector.register(worker.sentinel, selectors.EVENT_READ, index)
        fed = expected = 0
        feeding, busy_cpu, last_progress = True, 0.0, time.monotonic()
        resumed = time.thread_time()
        while True:
            while feeding and writer.slot_ready():
                try:
                    sample = next(inputs, _END)
                    arrays = None if sample is _END else {name: np.asarray(value) for name, value in sample.items()}
                except Exception as error:  # the caller's iterable raised: the run must end, not hang
                    raise PipelineError(f"reading the inputs failed: {first_line(error)}") from error
                if arrays is None:
                    writer.send_marker(("end", fed, []))
                    selector.unregister(writer.freed)
                    feeding = False
                else:
                    writer.write(fed, arrays)
                    fed += 1
            ready = selector.select(timeout=max(0.0, last_progress + timeout - time.monotonic()))
            if not ready:
                raise PipelineError(f"no result for {timeout:g} s: the pipeline stalled")
            for key in [key for key, _ in ready if isinstance(key.data, int)]:
                selector.unregister(key.fileobj)
                workers[key.data].join(timeout=1)
                if workers[key.data].exitcode:  # a worker that raised sent an error marker and exited with 0
                    raise _death(workers)
            if not reader.data.poll(0):
                continue
            item = reader.take()
            if item[0] == "error":
                raise PipelineError(f"stage {item[1]} failed: {item[2]}", stage=item[1])
            if item[0] == "end":
                if item[1] != expected:
                    raise PipelineError(f"the pipeline ended after {expected} of {item[1]} samples")
                if stats is not None:
                    busy_cpu += time.thread_time() - resumed
                    stats.update(stages=item[2], samples=expected, driver_cpu_ms=1000 * busy_cpu / max(expected, 1))
                return
            if item[1] != expected:  # a FIFO chain cannot reorder; if it did, say so rather than mislabel
                raise PipelineError(f"result {item[1]} arrived where {expected} was due")
            result = {name: np.array(view) for name, view in item[2].items()}
            reader.release()
            expected, last_progress = expected + 1, time.monotonic()
            busy_cpu += time.thread_time() - resumed
            yield result
            resumed = time.thread_time()


def _death(workers) -> PipelineError:
    """The error for a worker found dead: the first stage that exited with a non-zero code."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for index, worker in enumerate(workers):
            code = worker.exitcode
            if code:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                return PipelineError(f"stage {index} worker {how}", stage=index)
        time.sleep(0.05)
    return PipelineError("a stage worker closed its link without an error")


def _stage_worker(index, path, threads, providers, inbox, outbox, slots, name, stop) -> None:
    """One stage: its own session; takes samples from its inbox, runs them, passes them on."""
    try:
        _serve(index, path, threads, providers, RingReader(*inbox), RingWriter(*outbox, slots=slots, name=name), stop)
    except (EOFError, BrokenPipeError):
        pass  # a neighbour closed its end: it died or the run ended; the driver reports which
    # Done, and nothing to clean up (the driver unlinks the blocks): skip the interpreter's
    # teardown, which with onnxruntime loaded took 0.4 s here while the driver waited to join.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve(index, path, threads, providers, reader: RingReader, writer: RingWriter, stop) -> None:
    parent = os.getppid()
    try:
        session = stage_session(path, threads, providers)
        wanted = [value.name for value in session.get_inputs()]
        produced = [value.name for value in session.get_outputs()]
    except Exception as error:
        writer.send_marker(("error", index, f"cannot load {Path(path).name}: {first_line(error)}"))
        return
    clock = {"stage": index, "samples": 0, "run_s": 0.0, "run_cpu_s": 0.0, "input_wait_s": 0.0, "output_wait_s": 0.0}
    started_cpu = None

    def running() -> bool:
        return not stop.is_set() and os.getppid() == parent

    while running():
        waited = time.perf_counter()
        if not reader.data.poll(_POLL_SECONDS):
            continue
        item = reader.take()
        if started_cpu is None:
            started_cpu = time.process_time()
        else:
            clock["input_wait_s"] += time.perf_counter() - waited
        if item[0] == "end":
            writer.send_marker(("end", item[1], [*item[2], _per_sample(clock, started_cpu)]))
            return
        if item[0] != "data":  # an upstream error: pass it on and finish
            writer.send_marker(item)
            return
        try:
            missing = [key for key in wanted if key not in item[2]]
            if missing:
                raise KeyError(f"no value for input {', '.join(missing)}")
            wall, cpu = time.perf_counter(), time.thread_time()
            values = session.run(produced, {key: item[2][key] for key in wanted})
            clock["run_cpu_s"] += time.thread_time() - cpu
            clock["run_s"] += time.perf_counter() - wall
        except Exception as error:
            writer.send_marker(("error", index, first_line(error)))
            return
        waited = time.perf_counter()
        while not writer.slot_ready(_POLL_SECONDS):
            if not running():
                return
        clock["output_wait_s"] += time.perf_counter() - waited
        try:
            writer.write(item[1], dict(zip(produced, values)))
        except OSError as error:  # /dev/shm full, most likely
            writer.send_marker(("error", index, f"cannot put its outputs in shared memory: {first_line(error)}"))
            return
        del item, values
        reader.release()  # after the write: an output may be an input passed through, a view of the slot
        clock["samples"] += 1


def _per_sample(clock: dict, started_cpu: float | None) -> dict:
    """A stage's timings per sample, in ms: `transport_cpu_ms` is its CPU time outside onnxruntime."""
    count = max(clock["samples"], 1)
    busy = (time.process_time() - started_cpu) if started_cpu is not None else 0.0
    return {
        "stage": clock["stage"], "samples": clock["samples"],
        "run_ms": 1000 * clock["run_s"] / count,
        "run_cpu_ms": 1000 * clock["run_cpu_s"] / count,
        "transport_cpu_ms": 1000 * max(busy - clock["run_cpu_s"], 0.0) / count,
        "input_wait_ms": 1000 * clock["input_wait_s"] / count,
        "output_wait_ms": 1000 * clock["output_wait_s"] / count,
    }
