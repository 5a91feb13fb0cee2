"""Model parallelism: a model cut into pipeline stages (`partition`) and run pipelined (`runner.run`).

See docs/partition.md for the cut rules, the manifest format and the runner's backends.

Names are imported on first use, so `import graphopt` stays cheap. The package is callable:
`graphopt.partition(model, stages=...)` is `graphopt.partition.api.partition`. Python binds a
subpackage, once imported, to its parent's attribute of the same name, so `graphopt.partition`
is this module whichever import came first; being callable, it still reads as the function.
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> the module that defines it
_HOMES = {
    "partition": "graphopt.partition.api",
    "partition_to_dir": "graphopt.partition.api",
    "Partition": "graphopt.partition.api",
    "COST_MODELS": "graphopt.partition.api",
    "DEFAULT_CUT_WEIGHT": "graphopt.partition.api",
    "MANIFEST_SCHEMA": "graphopt.partition.manifest",
    "load_manifest": "graphopt.partition.manifest",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'graphopt.partition' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return self.partition(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
