"""The `quantize` plugin: int8/int4 quantization (static QDQ, dynamic, weight-only), verified."""

import graphopt
from graphopt_plugins.quantize.quantize_pass import Quantize

__all__ = ["Quantize", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(Quantize)
