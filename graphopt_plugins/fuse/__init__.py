"""The `fuse` plugin: exact operator fusions and simplifications, one rewrite per module."""

import graphopt
from graphopt_plugins.fuse.fuse_pass import Fuse

__all__ = ["Fuse", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(Fuse)
