"""Refusing, before any work, a path graphopt could not write at the end; writing one atomically.

A read-only output folder used to be found after the whole run, as an internal error naming a
hidden temp file. `os.access` answers for the permission bits; a probe file for what it cannot
see (a read-only mount, an ACL, /proc, where even root may not create files).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from graphopt.errors import UsageError

__all__ = ["require_writable_folder", "folder_of", "atomic_write"]


def folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def require_writable_folder(path: Path, what: str) -> None:
    """UsageError (exit 2) naming the folder when `path`'s folder is missing or not writable."""
    folder = folder_of(path)
    if not folder.is_dir():
        raise UsageError(f"{what} folder does not exist", path=str(path))
    if not os.access(folder, os.W_OK | os.X_OK) or not _can_create_in(folder):
        raise UsageError(f"{what} folder '{folder}' is not writable", path=str(path))


def _can_create_in(folder: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".graphopt-probe-", delete=True):
            return True
    except OSError:
        return False


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write(handle)` into a temporary file beside `path`, renamed over it when done (removed if not)."""
    handle = tempfile.NamedTemporaryFile("wb", dir=folder_of(path), prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
        # NamedTemporaryFile makes the file 0600; ours are ordinary files (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
