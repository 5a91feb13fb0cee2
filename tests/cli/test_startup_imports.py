"""`import graphopt`, `graphopt passes` and `graphopt --help` start without loading onnxruntime (a second on a
small machine): `graphopt/__init__` and the modules every plugin loads defer it."""

import subprocess
import sys

import pytest

_PROBE = """
import sys
from graphopt.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
import graphopt
graphopt.Pass, graphopt.PassResult, graphopt.hookimpl  # the names plugins use
print("onnxruntime" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["passes"], ["--help"], ["optimize", "--help"]])
def test_listing_passes_and_help_do_not_import_onnxruntime(argv):
    done = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "False"


def test_the_api_names_are_there_on_first_use():
    probe = "import graphopt; print(callable(graphopt.optimize), graphopt.UsageError.__name__, 'optimize' in dir(graphopt))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "UsageError", "True"]


def test_importing_graphopt_loads_neither_onnx_onnxruntime_nor_networkx():
    probe = "import sys, graphopt; print(*(name in sys.modules for name in ('onnx', 'onnxruntime', 'networkx')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "False"]


@pytest.mark.parametrize("first", ["import graphopt.partition.manifest", "from graphopt.partition import partition", "pass"])
def test_graphopt_partition_is_the_function_whichever_import_came_first(first):
    probe = (f"{first}\nimport graphopt\nfrom graphopt.partition.api import partition\n"
             "print(callable(graphopt.partition), graphopt.partition.partition is partition)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]
