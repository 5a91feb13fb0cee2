"""Instrumentation around the passes: hook implementations the pipeline registers for a run,
and the one way it calls an instrumentation hook (`graphopt_before_pass` / `graphopt_after_pass`).
"""

from __future__ import annotations

import time
from pathlib import Path

from graphopt.errors import GraphoptError, PluginError
from graphopt.hookspecs import hookimpl
from graphopt.model_io import save_model
from graphopt.registry import Plugins

__all__ = ["PassTimer", "ModelDumper", "call_hook"]


class PassTimer:
    """Times passes through the before/after hooks."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.seconds: dict[int, float] = {}

    @hookimpl
    def graphopt_before_pass(self, index):
        self.started[index] = time.perf_counter()

    @hookimpl
    def graphopt_after_pass(self, index):
        self.seconds[index] = time.perf_counter() - self.started.pop(index, time.perf_counter())


class ModelDumper:
    """Writes the model after each pass as `NN_pass.onnx` (`--dump-dir`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def graphopt_after_pass(self, index, pass_, model):
        save_model(model, self.folder / f"{index + 1:02d}_{pass_.name}.onnx")


def call_hook(plugins: Plugins, name: str, *, model, **kwargs) -> None:
    """Calls every implementation of an instrumentation hook; one that raises is named.

    pluggy would let the exception through bare, and the user would see an internal error
    instead of which plugin failed. `model` is made (a callable's result) only for a hook
    that takes it.
    """
    caller = getattr(plugins.manager.hook, name)
    for impl in reversed(caller.get_hookimpls()):  # pluggy's order: last registered first
        arguments = {key: (model() if key == "model" else kwargs[key]) for key in impl.argnames}
        try:
            impl.function(**arguments)
        except GraphoptError:
            raise
        except Exception as error:
            raise PluginError(f"plugin '{impl.plugin_name}' failed in {name}: {type(error).__name__}: {error}") from error
