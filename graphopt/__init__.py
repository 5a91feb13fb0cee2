"""graphopt: a plugin-based graph optimization compiler for ONNX.

    import graphopt
    result = graphopt.optimize("model.onnx", passes=["cleanup"])
    result.model, result.report

Plugin authors subclass `graphopt.Pass`, return `graphopt.PassResult` and mark hooks with
`graphopt.hookimpl` (see `graphopt.hookspecs` for the hooks and their contracts).

Names are imported on first use (a module `__getattr__`), so `graphopt passes` and
`graphopt --help` start without loading onnxruntime.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    "optimize": "graphopt.api",
    "optimize_to_file": "graphopt.api",
    "Result": "graphopt.api",
    "Pass": "graphopt.passes",
    "PassResult": "graphopt.passes",
    "PassContext": "graphopt.passes",
    "hookimpl": "graphopt.hookspecs",
    "load_model": "graphopt.model_io",
    "save_model": "graphopt.model_io",
    "GraphoptError": "graphopt.errors",
    "InputError": "graphopt.errors",
    "PassError": "graphopt.errors",
    "PluginError": "graphopt.errors",
    "PreconditionError": "graphopt.errors",
    "UsageError": "graphopt.errors",
    "VerificationError": "graphopt.errors",
    # the subpackage itself: callable as the function (see graphopt/partition/__init__.py)
    "partition": "graphopt.partition",
}

__all__ = ["__version__", *_HOMES]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if home == f"graphopt.{name}" else getattr(module, name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))

