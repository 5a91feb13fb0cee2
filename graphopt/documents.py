"""Reading a small text document (a TOML recipe, a JSON manifest) with errors that name the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from graphopt.errors import InputError

__all__ = ["read_document"]


def read_document(path: Path, parse: Callable[[str], object], *, missing: str, unreadable: str,
                  invalid: type[Exception]) -> object:
    """`parse(text of path)`; InputError `missing` for no file, "`unreadable`: why" for one that
    cannot be read as text or that `parse` rejects with `invalid`."""
    try:
        return parse(path.read_text())
    except FileNotFoundError as error:
        raise InputError(missing, path=str(path)) from error
    except (OSError, UnicodeDecodeError, invalid) as error:
        raise InputError(f"{unreadable}: {error}", path=str(path)) from error
