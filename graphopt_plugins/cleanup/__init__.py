"""The `cleanup` plugin: lossless removal of what exporters leave behind."""

import graphopt
from graphopt_plugins.cleanup.cleanup_pass import Cleanup

__all__ = ["Cleanup", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(Cleanup)
