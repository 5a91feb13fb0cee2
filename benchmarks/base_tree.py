"""An older commit's graphopt, importable beside this tree's: a detached worktree behind a shim folder.

The shim holds `graphopt` and `graphopt_plugins` (older commits kept the plugins in `plugins/`,
installed under that name) as symlinks into the worktree, so a subprocess with the shim first
on PYTHONPATH, started outside the repository, imports the older code and its plugins resolve
through the installed entry points to the older files.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def base_tree(revision: str) -> Iterator[Path]:
    """The shim folder to put first on PYTHONPATH for `revision`'s graphopt; removed on exit."""
    with tempfile.TemporaryDirectory(prefix="graphopt-base-") as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base), revision], check=True)
        try:
            shim = Path(scratch) / "shim"
            shim.mkdir()
            (shim / "graphopt").symlink_to(base / "graphopt")
            plugins = base / "graphopt_plugins" if (base / "graphopt_plugins").is_dir() else base / "plugins"
            (shim / "graphopt_plugins").symlink_to(plugins)
            yield shim
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
