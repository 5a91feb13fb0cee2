"""The `prune` plugin: unstructured, n:m and structured channel pruning with reconstruction."""

import graphopt
from graphopt_plugins.prune.prune_pass import Prune

__all__ = ["Prune", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(Prune)
