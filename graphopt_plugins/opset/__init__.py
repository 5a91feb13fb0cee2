"""The `opset` plugin: convert a model to a newer default-domain opset, exactly."""

import graphopt
from graphopt_plugins.opset.opset_pass import UpgradeOpset

__all__ = ["UpgradeOpset", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(UpgradeOpset)
