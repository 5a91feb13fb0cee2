"""Every module imports on its own, first: with `graphopt/__init__` lazy, nothing else loads the
rest of the package first and hides a cycle (`graphopt.activations` -> `graphopt.verify` ->
`graphopt.verify.tensor_errors` -> `graphopt.activations` once broke every data-aware plugin
loaded before the verifier)."""

import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("graphopt", "graphopt_plugins")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
"""


def _modules() -> list[str]:
    names = []
    for package in ("graphopt", "graphopt_plugins"):
        for path in sorted((_ROOT / package).rglob("*.py")):
            parts = path.relative_to(_ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # runs the CLI
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first_in_a_fresh_package():
    names = _modules()
    assert len(names) > 150
    done = subprocess.run([sys.executable, "-c", _PROBE, *names], capture_output=True, text=True, check=True, cwd=_ROOT)
    assert done.stdout.strip() == ""
