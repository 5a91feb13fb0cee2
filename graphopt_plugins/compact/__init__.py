"""The `compact` plugin: a smaller file for the same model (names shortened, default attributes dropped)."""

import graphopt
from graphopt_plugins.compact.compact_pass import CompactModel

__all__ = ["CompactModel", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(CompactModel)
