"""The `host-ort` latency backend's timer: onnxruntime on this machine, 1 thread, interleaved medians.

A 1-thread session stands in for a phone's big core. Models compared with each other are timed
in alternation, round after round, so a slow spell of a shared machine hits all of them alike.
Time is the calling thread's CPU time, not the wall clock: a 1-thread onnxruntime session runs
in the caller, and CPU time leaves out the slices other processes held the core. On a shared
machine a 2 ms model's wall-clock median moved by 20% between two measurements a minute apart
(PP-OCR cls kept int8 at 1.05x faster, then measured 1.2x slower).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from graphopt.verify.runner import make_session

__all__ = ["interleaved_cpu_medians"]


def interleaved_cpu_medians(models: list, feeds: list[dict], seconds: float = 0.3, rounds: int = 3,
                            decided: Callable[[list[float]], bool] | None = None) -> list[list[float]]:
    """Per model, the milliseconds (CPU time of this thread) of each timed run, runs alternated.

    `seconds` is the time to spend in all (it sets the run count, between 3 and 200 per round).
    `decided(medians so far)`, asked after each round from the second on but the last, ends
    the timing early when it returns true.
    """
    sessions = [make_session(model, optimize=True, threads=1) for model in models]
    for session, feed in zip(sessions, feeds):
        session.run(None, feed)  # warm-up
    # One run each, timed, sets the per-round run count and is the first timed run of round one.
    times: list[list[float]] = [[_timed_ms(session, feed)] for session, feed in zip(sessions, feeds)]
    once = max(sum(first for first, in times) / 1e3, 1e-6)
    runs = int(min(max(seconds / once / max(rounds, 1), 3), 200))
    for round_index in range(max(rounds, 1)):
        for index, (session, feed) in enumerate(zip(sessions, feeds)):
            for _ in range(runs - (round_index == 0)):
                times[index].append(_timed_ms(session, feed))
        if decided is not None and 1 <= round_index < rounds - 1 and decided(medians(times)):
            break
    return times


def _timed_ms(session, feed: dict) -> float:
    begin = time.thread_time()
    session.run(None, feed)
    return (time.thread_time() - begin) * 1e3


def medians(times: list[list[float]]) -> list[float]:
    return [statistics.median(t) for t in times]
