"""The emit step: the optimized model converted for its runtime, verified there, then written."""

from __future__ import annotations

__all__ = ["emit_model"]


def emit_model(model, output, emit: str, precision: str, settings: dict) -> dict:
    from graphopt.errors import UsageError

    raise UsageError(f"--emit {emit} is not available yet")
