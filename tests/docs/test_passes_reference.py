"""docs/passes.md is exactly what `graphopt passes --markdown` says of the first-party plugins."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "passes.md"


def first_party_plugins() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="graphopt") if ep.value.startswith("graphopt_plugins"))


def generate() -> str:
    command = [sys.executable, "-m", "graphopt", "passes", "--markdown"]
    for name in first_party_plugins():
        command += ["--plugin", name]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_the_passes_reference_is_current():
    assert first_party_plugins(), "no first-party plugin is installed"
    assert DOC.read_text() == generate(), f"regenerate it: python {Path(__file__).relative_to(DOC.parents[1])}"


if __name__ == "__main__":
    DOC.write_text(generate())
