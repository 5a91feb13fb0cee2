"""The `fp16` plugin: float32 weights and activations to float16, budgeted, the interface kept."""

import graphopt
from graphopt_plugins.fp16.fp16_pass import ConvertToFloat16

__all__ = ["ConvertToFloat16", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(ConvertToFloat16)
