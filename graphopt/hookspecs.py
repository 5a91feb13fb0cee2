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
    - A pass that needs a newer default-domain opset says so (`requires_opset = 13`); the
      pipeline converts an older model before it with the `opset` pass, or stops with exit 2.
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
