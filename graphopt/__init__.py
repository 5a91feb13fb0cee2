"""graphopt: a plugin-based graph optimization compiler for ONNX.

    import graphopt
    result = graphopt.optimize("model.onnx", passes=["cleanup"])
    result.model, result.report

Plugin authors subclass `graphopt.Pass`, return `graphopt.PassResult` and mark hooks with
`graphopt.hookimpl` (see `graphopt.hookspecs` for the hooks and their contracts).
"""

__version__ = "0.1.0"

from graphopt.errors import (  # noqa: E402
    GraphoptError,
    InputError,
    PassError,
    PluginError,
    PreconditionError,
    UsageError,
    VerificationError,
)
from graphopt.hookspecs import hookimpl  # noqa: E402
from graphopt.passes import Pass, PassContext, PassResult  # noqa: E402
from graphopt.api import Result, optimize, optimize_to_file  # noqa: E402
from graphopt.model_io import load_model, save_model  # noqa: E402
from graphopt.partition import partition  # noqa: E402  (the function; the subpackage stays importable by its dotted path)

__all__ = [
    "__version__",
    "optimize",
    "optimize_to_file",
    "partition",
    "Result",
    "Pass",
    "PassResult",
    "PassContext",
    "hookimpl",
    "load_model",
    "save_model",
    "GraphoptError",
    "InputError",
    "PassError",
    "PluginError",
    "PreconditionError",
    "UsageError",
    "VerificationError",
]
