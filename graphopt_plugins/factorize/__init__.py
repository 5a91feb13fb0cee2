"""The `factorize` plugin: data-aware low-rank factorization of MatMul/Gemm/Conv weights."""

import graphopt
from graphopt_plugins.factorize.factorize_pass import Factorize

__all__ = ["Factorize", "graphopt_register_passes"]


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(Factorize)
