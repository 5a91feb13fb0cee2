"""How an error names a setting: as the API parameter (`input_shapes=`) or as the CLI flag.

The same checks serve both front ends, and a message should name what the caller typed; the CLI
runs its command inside `cli_spelling()`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["parameter", "cli_spelling"]

_FLAGS = {
    "input_shapes": "--input-shape",
    "inputs": "--inputs",
    "calibration": "--calibration",
    "budget": "--budget",
    "passes": "--passes",
    "freeze_shapes": "--freeze-shapes",
    "set_options": "--set",
    "output": "--output",
    "report": "--report",
    "dump_dir": "--dump-dir",
}
_SPELLING = contextvars.ContextVar("graphopt_parameter_spelling", default="api")


def parameter(name: str) -> str:
    """`name` as the caller spelled it: `--input-shape` under the CLI, `input_shapes=` from Python."""
    if _SPELLING.get() == "cli":
        return _FLAGS.get(name, f"--{name.replace('_', '-')}")
    return f"{name}="


@contextlib.contextmanager
def cli_spelling() -> Iterator[None]:
    token = _SPELLING.set("cli")
    try:
        yield
    finally:
        _SPELLING.reset(token)
