"""Latency backends: where a latency decision is timed, behind one `compare` call.

Every pass that chooses by speed (quantize keeping a layer float, factorize's and prune's
`saving_by`/`allocation=latency`, the pipeline's never-slower check) asks `ctx.latency`, a
`LatencyBackend`, instead of timing onnxruntime itself, so the decision is made for the
deployment target:

- `host-ort`: onnxruntime on this machine, 1 thread, interleaved CPU-time medians (the default);
- `host-litert`: the model converted to a LiteRT flatbuffer (onnx2tf) and timed in LiteRT's
  XNNPACK interpreter on this machine, 1 thread (needs `graphopt[tflite]`);
- `none`: nothing is timed; callers decide by accuracy and MACs alone (`measures` is false);
- any name a plugin answers to through `graphopt_measure_latency` (a phone over adb, a board).

The backend keeps a count of the comparisons made per purpose, which the report carries with
its name, so every decision in the report names where it was timed.
"""

from __future__ import annotations

import collections
import os
import statistics
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt.errors import PluginError, UsageError

__all__ = ["LatencyBackend", "HostOrt", "NoLatency", "PluginLatency", "backend", "BUILTIN_BACKENDS", "DEFAULT_BACKEND"]

BUILTIN_BACKENDS = ("host-ort", "host-litert", "none")
DEFAULT_BACKEND = "host-ort"
ModelLike = onnx.ModelProto | str | os.PathLike


class LatencyBackend:
    """Times models against each other on one target. Subclasses implement `_medians`.

    `compare(models, feeds)` is the whole API passes use; `measures` is false for a backend that
    times nothing (`none`), and a caller then decides without latency.
    """

    name = ""
    measures = True

    def __init__(self) -> None:
        self.comparisons: collections.Counter[str] = collections.Counter()

    def compare(self, models: Mapping[str, ModelLike], feeds: Mapping[str, Any], *, seconds: float = 0.3,
                rounds: int = 3, purpose: str = "", decided: Callable[[list[float]], bool] | None = None) -> dict[str, dict]:
        """`{label: timing}` for each model, timed interleaved on this backend's target.

        `feeds` is one sample (`{input: array}`, no N axis) shared by all models, or
        `{label: sample}` per model. `seconds` is roughly the time to spend in all, `rounds` the
        number of alternations. A timing has `median_ms` (None when nothing is timed), `ratio`
        (median / the first model's) and `backend`. `purpose` (e.g. `"quantize: layer"`) is
        counted for the report. `decided(medians so far, one per model in order)`, asked after
        each round from the second on but the last, ends the timing when it returns true: a
        comparison whose answer is already plain takes fewer rounds (a backend may time them all).
        """
        labels = list(models)
        if not labels:
            return {}
        samples = _per_label(labels, feeds)
        medians = self._medians([models[label] for label in labels], [samples[label] for label in labels], seconds, rounds, decided)
        self.comparisons[purpose or "unnamed"] += 1
        first = medians[0]
        return {label: {"median_ms": ms, "ratio": (ms / first if ms is not None and first else None), "backend": self.name}
                for label, ms in zip(labels, medians)}

    def report(self) -> dict:
        """What the report says of the latency decisions: this backend and what it timed."""
        return {"backend": self.name, "measures": self.measures, "comparisons": dict(self.comparisons)}

    def _medians(self, models: list, feeds: list[dict], seconds: float, rounds: int, decided=None) -> list[float | None]:
        raise NotImplementedError


class HostOrt(LatencyBackend):
    """onnxruntime on this machine, 1 thread, all graph optimizations, CPU-time medians."""

    name = "host-ort"

    def _medians(self, models, feeds, seconds, rounds, decided=None):
        from graphopt.latency.host_ort import interleaved_cpu_medians, medians

        return medians(interleaved_cpu_medians(models, feeds, seconds, rounds, decided))


class NoLatency(LatencyBackend):
    """Times nothing: callers decide by accuracy and MACs (`measures` is false)."""

    name = "none"
    measures = False

    def _medians(self, models, feeds, seconds, rounds, decided=None):
        return [None for _ in models]


class HostLitert(LatencyBackend):
    """Each model converted to a LiteRT flatbuffer and timed in LiteRT's XNNPACK interpreter, 1 thread."""

    name = "host-litert"

    def __init__(self) -> None:
        from graphopt.emit.tflite import require_tflite

        require_tflite("--latency-on host-litert")
        super().__init__()

    def _medians(self, models, feeds, seconds, rounds, decided=None):
        from graphopt.latency.host_litert import interleaved_litert_medians

        return interleaved_litert_medians(models, feeds, seconds, rounds)


class PluginLatency(LatencyBackend):
    """A backend a plugin answers to: each model saved to a file, timed by `graphopt_measure_latency`."""

    measures = True

    def __init__(self, name: str, manager) -> None:
        super().__init__()
        self.name, self._manager = name, manager

    def _medians(self, models, feeds, seconds, rounds, decided=None):
        settings = {"backend": self.name, "threads": 1, "runs": max(3, int(10 * seconds / 0.3)), "warmup": 2}
        results: list[list[float]] = [[] for _ in models]
        with tempfile.TemporaryDirectory(prefix="graphopt-latency-") as folder:
            paths = [_as_path(model, Path(folder) / f"model{index}.onnx") for index, model in enumerate(models)]
            for round_index in range(max(rounds, 1)):
                order = list(range(len(models)))
                shift = round_index % len(order)
                for index in order[shift:] + order[:shift]:
                    results[index].append(self._measure(paths[index], feeds[index], settings))
        return [statistics.median(values) for values in results]

    def _measure(self, path: str, inputs: dict, settings: dict) -> float:
        try:
            answer = self._manager.hook.graphopt_measure_latency(model_path=path, inputs=inputs, settings=dict(settings))
        except Exception as error:
            raise PluginError(f"latency backend '{self.name}' failed: {type(error).__name__}: {error}") from error
        if answer is None:
            raise PluginError(f"no plugin answered graphopt_measure_latency for backend '{self.name}'")
        try:
            return float(answer["median_ms"])
        except (KeyError, TypeError, ValueError) as error:
            raise PluginError(f"latency backend '{self.name}' returned {answer!r}, not a dict with a numeric median_ms") from error


def backend(name: str | None = None, plugins=None) -> LatencyBackend:
    """The latency backend called `name` (default `host-ort`); `plugins` (`registry.Plugins`) for
    plugin backends. Raises UsageError naming the known backends for an unknown name."""
    name = name or DEFAULT_BACKEND
    if name == "host-ort":
        return HostOrt()
    if name == "none":
        return NoLatency()
    if name == "host-litert":
        return HostLitert()
    offered = plugin_backends(plugins)
    if name in offered:
        return PluginLatency(name, plugins.manager)
    known = ", ".join(list(BUILTIN_BACKENDS) + sorted(offered))
    raise UsageError(f"unknown latency backend '{name}' (known: {known})")


def plugin_backends(plugins) -> dict[str, str]:
    """`{backend name: plugin}` for every name a plugin offers through `graphopt_latency_backends`."""
    if plugins is None:
        return {}
    offered = {}
    for impl in plugins.manager.hook.graphopt_latency_backends.get_hookimpls():
        try:
            names = list(impl.function())
        except Exception as error:
            raise PluginError(f"plugin '{impl.plugin_name}' failed in graphopt_latency_backends: {error}") from error
        for each in names:
            offered.setdefault(str(each), impl.plugin_name)
    return offered


def of(ctx) -> LatencyBackend:
    """The backend a pass times on: the run's (`ctx.latency`), else `host-ort` outside a pipeline."""
    found = getattr(ctx, "latency", None)
    return found if found is not None else HostOrt()


def _per_label(labels: list[str], feeds: Mapping[str, Any]) -> dict[str, dict]:
    per_model = all(label in feeds for label in labels) and not any(isinstance(v, np.ndarray) for v in feeds.values())
    return {label: dict(feeds[label]) if per_model else dict(feeds) for label in labels}


def _as_path(model: ModelLike, path: Path) -> str:
    if isinstance(model, onnx.ModelProto):
        onnx.save_model(model, str(path))
        return str(path)
    return str(model)
