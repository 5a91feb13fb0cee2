"""`round-weights`: round float32 weights to fewer mantissa bits, keeping them float32.

Why: an app ships its model compressed (APK, app bundle, OTA update). Float32 weights with
random low mantissa bits barely compress; the same weights rounded to 10 mantissa bits
(float16's precision, float32's range) zip to a fraction of the size, and the model still runs
on every runtime unchanged, because the dtype is the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

import graphopt
from graphopt import graph_queries

__all__ = ["RoundWeights", "round_mantissa", "graphopt_register_passes"]

_FLOAT32_MANTISSA_BITS = 23


def round_mantissa(values: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """`values` (float32) rounded to nearest, ties to even, at `mantissa_bits`; inf and NaN kept."""
    drop = _FLOAT32_MANTISSA_BITS - mantissa_bits
    if drop <= 0:
        return values.copy()
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    odd = (bits >> np.uint32(drop)) & np.uint32(1)
    bias = np.uint32((1 << (drop - 1)) - 1) + odd
    mask = np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    rounded = ((bits + bias) & mask).view(np.float32)
    # A carry out of the largest finite exponent would make inf; keep such values as they were.
    return np.where(np.isfinite(values) & np.isfinite(rounded), rounded, values).reshape(values.shape)


class RoundWeights(graphopt.Pass):
    """Rounds float32 weights to `mantissa_bits` so the model file compresses better.

    Rewrites every float32 initializer with at least `min_elements` elements, in the main graph
    and in If/Loop/Scan bodies and local functions. Leaves alone: other dtypes, small tensors
    (biases, scales, shapes), and values already representable. Lossy: held to `budget`.
    """

    name = "round-weights"
    lossless = False
    after = ("cleanup", "fuse")  # round what is left after folding, not what folding would change

    @dataclasses.dataclass
    class Options:
        mantissa_bits: int = 10  # mantissa bits kept (float32 has 23; 10 is float16's precision)
        min_elements: int = 256  # tensors smaller than this stay exact
        budget: str = "cos=0.999"  # accuracy this pass must keep, e.g. cos=0.999 or sqnr=40

        def __post_init__(self):
            if not 1 <= self.mantissa_bits <= _FLOAT32_MANTISSA_BITS:
                raise ValueError(f"mantissa_bits must be in 1..{_FLOAT32_MANTISSA_BITS}, not {self.mantissa_bits}")
            if self.min_elements < 0:
                raise ValueError("min_elements must be >= 0")

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        rounded_tensors = rounded_elements = 0
        seen: set[int] = set()
        for owner in graph_queries.iter_graphs(graph):
            for tensor in owner.tensors().values():
                if id(tensor) in seen or not isinstance(tensor, gs.Constant):
                    continue
                seen.add(id(tensor))
                values = tensor.values
                if values.dtype != np.float32 or values.size < self.options.min_elements:
                    continue
                rounded = round_mantissa(values, self.options.mantissa_bits)
                if np.array_equal(rounded, values):
                    continue
                tensor.values = rounded
                rounded_tensors += 1
                rounded_elements += int(values.size)
        stats = {"tensors_rounded": rounded_tensors, "elements_rounded": rounded_elements}
        ctx.logger.info("round-weights: %s", stats)
        return graphopt.PassResult(changed=rounded_tensors > 0, stats=stats)


@graphopt.hookimpl
def graphopt_register_passes(registry):
    registry.add(RoundWeights)
