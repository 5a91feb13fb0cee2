"""The `ray` backend: each stage a Ray actor, so stages can run on different machines.

Ray is the engine: its actors hold the sessions, its object store moves the tensors (an
actor's result is passed to the next actor as an ObjectRef, never through the driver), its
per-caller ordering of actor calls keeps samples in order, and its fault reports
(RayActorError, RayTaskError) tell which stage failed. The driver only submits samples,
keeps a bounded number of calls in flight and collects results in order. Each actor gets its
stage model as bytes, so the workers need no shared filesystem.

A Ray actor call costs the driver, the raylet (which keeps the object store) and the actor
milliseconds of CPU, whatever it carries: with one sample per call, a 2-stage encoder of 4 ms
per stage cost ~13 ms of CPU per sample beyond onnxruntime's 8 on this 2-core machine (load
~11), PP-OCRv4 det ~10 ms per call. So a call carries `samples_per_call` consecutive samples, run one after another by the actor and
returned together: one task and one object per hop for the lot. Samples go to the first actor
as the call's argument (Ray inlines a small one and puts a large one in the object store
itself); arrays arriving from the object store are read-only views of it, handed to
onnxruntime without a copy. `ray.init()` is called only if the
caller has not: set RAY_ADDRESS (or call `ray.init(address=...)` first) to use a cluster.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from graphopt.errors import UsageError, first_line
from graphopt.partition.runner import PipelineError, stage_session

__all__ = ["run_on_ray"]


class _Stage:
    """A stage's session inside a Ray actor."""

    def __init__(self, model: bytes, threads: int, providers: list[str]):
        self._session = stage_session(model, threads, providers)
        self._wanted = [value.name for value in self._session.get_inputs()]
        self._produced = [value.name for value in self._session.get_outputs()]

    def run(self, samples: list[dict]) -> list[dict]:
        return [dict(zip(self._produced, self._session.run(self._produced, {name: values[name] for name in self._wanted})))
                for values in samples]


def run_on_ray(files: list[Path], inputs: Iterable[dict], settings: dict, *, in_flight: int, timeout: float,
               samples_per_call: int = 1) -> Iterator[dict]:
    try:
        import ray
        from ray.exceptions import GetTimeoutError, RayError
    except ImportError as error:
        raise UsageError("the ray backend needs Ray: pip install 'graphopt[ray]'") from error
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    actor_class = ray.remote(num_cpus=settings["threads"], max_restarts=0)(_Stage)
    actors = [actor_class.remote(path.read_bytes(), settings["threads"], settings["providers"]) for path in files]
    pending: collections.deque[list] = collections.deque()

    def collect(refs: list) -> list[dict]:
        try:
            return ray.get(refs[-1], timeout=timeout)
        except GetTimeoutError:
            raise PipelineError(f"no result for {timeout:g} s: the pipeline stalled") from None
        except RayError as error:
            raise _failing_stage(ray, refs, error) from error

    try:
        for chunk in _chunks(inputs, samples_per_call):
            refs, ref = [], chunk
            for actor in actors:
                ref = actor.run.remote(ref)
                refs.append(ref)
            pending.append(refs)
            while len(pending) >= in_flight:
                yield from collect(pending.popleft())
        while pending:
            yield from collect(pending.popleft())
    finally:
        for actor in actors:
            ray.kill(actor)


def _chunks(inputs: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive samples, `size` at a time (the last chunk may be shorter)."""
    iterator = iter(inputs)
    while chunk := [dict(sample) for sample in itertools.islice(iterator, max(size, 1))]:
        yield chunk


def _failing_stage(ray, refs: list, error: Exception) -> PipelineError:
    """The first stage whose result for this sample is an error names the failure."""
    from ray.exceptions import RayError

    for index, ref in enumerate(refs):
        try:
            ray.get(ref, timeout=10)
        except RayError as stage_error:
            return PipelineError(f"stage {index} failed: {type(stage_error).__name__}: {first_line(stage_error)}", stage=index)
    return PipelineError(f"the pipeline failed: {first_line(error)}")
