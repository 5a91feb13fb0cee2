"""The hooks a graphopt plugin may implement. This module is the plugin author's manual.

A plugin is any importable module (or object) listed in the `graphopt` entry-point group:

    # pyproject.toml
    [project.entry-points.graphopt]
    my_plugin = "my_plugin"

It implements hooks by name, marked with `graphopt.hookimpl`. graphopt calls hooks with
keyword arguments only; a hook may declare just the arguments it uses, and hooks only ever
gain new arguments at the end. A misspelled hook name is reported as a warning naming the
plugin, and the plugin is not loaded.
"""

from __future__ import annotations

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT"]

PROJECT = "graphopt"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def graphopt_register_passes(registry):
    """Register this plugin's passes: call `registry.add(PassClass)` once per pass.

    Contract:
    - `PassClass` subclasses `graphopt.Pass` and sets a unique, lower-case `name` (letters,
      digits, `-` and `_`), which is what `--passes` and `--set NAME.OPTION=…` use.
    - A name already registered by another plugin is refused: `add` raises `PluginError`
      naming both plugins, which graphopt reports as a warning (passes added before stay).
    - Do not do expensive work here: it runs every time graphopt starts. Import heavy
      dependencies inside `run()`.
    - An exception raised here is reported as a warning naming the plugin; other plugins
      are unaffected.
    """


@hookspec
def graphopt_before_pass(index, pass_, model):
    """Called just before pass number `index` (0-based) of a pipeline runs.

    `pass_` is the configured `graphopt.Pass` instance; `model` is the `onnx.ModelProto` it will
    receive. Treat `model` as read-only. Use it for instrumentation (timing, logging, dumps),
    never to change what the pass sees.
    """


@hookspec
def graphopt_after_pass(index, pass_, model, result, accepted):
    """Called after pass number `index` ran and was verified.

    `model` is the `onnx.ModelProto` the pipeline goes on with: the pass's output when
    `accepted` is true, the unchanged input when it was rolled back. `result` is the
    `graphopt.PassResult` (None when the pass raised). Read-only, as for `graphopt_before_pass`.
    """


@hookspec
def graphopt_latency_backends():
    """Return the names of the latency backends this plugin times on (e.g. `["adb-ort"]`).

    Contract:
    - A name is what the user passes to `--latency-on NAME` (`latency_on=` in the API). It must
      not be one of the built-in backends (`host-ort`, `host-litert`, `none`): those win.
    - Called once per run, before any pass: keep it cheap (no device round trip here).
    - Every name returned must be answered by this plugin's `graphopt_measure_latency`.
    """


@hookspec(firstresult=True)
def graphopt_measure_latency(model_path, inputs, settings):
    """Time one inference of the ONNX model at `model_path` on the target; return `{"median_ms": float}`.

    Contract:
    - `settings["backend"]` is the backend name the user chose; return None when it is not one
      of the names this plugin gave in `graphopt_latency_backends` (the next plugin is asked).
    - `model_path` is a readable `.onnx` file graphopt wrote for this call (it is deleted
      afterwards); `inputs` is one sample, `{input name: numpy array}` without an N axis.
    - `settings` also has `threads` (1: one big core), `runs` (timed runs to make) and `warmup`
      (untimed runs first). Return the median of the timed runs in milliseconds, as
      `{"median_ms": float}`; extra keys are allowed and ignored.
    - graphopt calls this several times per model, alternating between the models it compares,
      and takes the median: do not cache results across calls.
    - Raise on failure (device gone, model refused): graphopt stops with exit 3 naming the
      backend and the exception. Never return a made-up time.
    """
