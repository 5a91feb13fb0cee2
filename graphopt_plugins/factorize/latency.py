"""Does a split pay in onnxruntime? Each candidate layer timed alone against its two factors.

Fewer MACs are not less time: onnxruntime's NCHWc conv kernels run a thin k×k Cin→r conv
followed by a 1×1 r→Cout conv less efficiently than one square conv, and a 1×1 conv on a 1×1
map (squeeze-excite) costs its call overhead whatever its rank. So each layer is built as a
model of its own, fed its real input shape, and timed on the run's latency backend
(`graphopt.latency`; host-ort: 1 thread, all optimizations, interleaved medians) as it is and as its two factors at a few
ranks; time between measured ranks is interpolated linearly, which is how a GEMM's cost
grows with its inner size. The global allocation then spends its loss where it buys time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt.latency import backend as latency_backend
from graphopt_plugins.factorize.lowrank import Factorization
from graphopt_plugins.factorize.rewrite import factorize_site
from graphopt_plugins.factorize.sites import Site

__all__ = ["LayerTiming", "time_layers", "layer_model"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerTiming:
    """A layer's measured milliseconds, as it is and factorized at `ranks` (ascending)."""

    original_ms: float
    ranks: tuple[int, ...]
    factorized_ms: tuple[float, ...]

    def ms(self, rank: int | None) -> float:
        """Milliseconds at `rank` (None: the original), never rising as the rank falls."""
        if rank is None:
            return self.original_ms
        # non-decreasing in rank: a noisy point must not make a lower rank look slower
        times = np.maximum.accumulate(np.asarray(self.factorized_ms))
        ranks = np.asarray(self.ranks, dtype=float)
        if len(ranks) == 1:
            return float(times[0] * rank / ranks[0])
        if rank <= ranks[0]:  # below the lowest measured rank: the slope of the first segment
            slope = (times[1] - times[0]) / (ranks[1] - ranks[0])
            return float(max(times[0] - slope * (ranks[0] - rank), 0.0))
        return float(np.interp(rank, ranks, times))


def layer_model(site: Site, input_shape: tuple[int, ...], opset: int,
                factors: tuple[np.ndarray, np.ndarray] | None = None) -> onnx.ModelProto | None:
    """The site's node alone on an input of `input_shape`; with `factors`, its two-factor form.

    None when a bias is not a constant (the layer then cannot be lifted out alone)."""
    node = site.node
    x = gs.Variable("x", dtype=site.dtype, shape=list(input_shape))
    constants = [graph_queries.constant_value(t) for t in node.inputs[1:] if t.name]
    if any(value is None for value in constants):
        return None
    inputs = [x] + [gs.Constant(f"w{i}", np.asarray(value)) for i, value in enumerate(constants, 1)]
    y = gs.Variable("y", dtype=site.dtype)
    layer = gs.Node(node.op, "layer", attrs=dict(node.attrs), inputs=inputs, outputs=[y])
    graph = gs.Graph(nodes=[layer], inputs=[x], outputs=[y], opset=opset)
    if factors is not None:
        alone = Site(0, layer, site.kind, site.weight, site.dtype)
        factorize_site(graph, alone, *factors)
        graph.nodes = [n for n in graph.nodes if n.inputs or n.outputs]
        graph.toposort()
    return onnx.shape_inference.infer_shapes(gs.export_onnx(graph, do_type_check=False))


def time_layers(sites: Iterable[Site], fits: dict[int, Factorization], input_shapes: dict[int, tuple[int, ...]],
                ranks_of: Callable[[Site], list[int]], opset: int, seconds: float = 0.1, timer=None) -> dict[int, LayerTiming]:
    """A `LayerTiming` per site whose input shape is known and that has ranks to try, timed on
    `timer` (a `graphopt.latency` backend; host-ort when None)."""
    timer = timer if timer is not None else latency_backend("host-ort")
    timings = {}
    for site in sites:
        shape, ranks = input_shapes.get(site.index), sorted(set(ranks_of(site)))
        if shape is None or not ranks:
            continue
        models = {"original": layer_model(site, shape, opset)}
        if models["original"] is None:
            continue
        for rank in ranks:
            models[f"r{rank}"] = layer_model(site, shape, opset, fits[site.index].factors(rank))
        feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(site.dtype)}
        measured = timer.compare(models, feed, seconds=seconds, rounds=3, purpose="factorize: layer")
        timing = LayerTiming(measured["original"]["median_ms"], tuple(ranks),
                             tuple(measured[f"r{rank}"]["median_ms"] for rank in ranks))
        timings[site.index] = timing
        logger.debug("factorize: %s %.3f ms; factorized %s", site.name, timing.original_ms,
                     ", ".join(f"r{r}: {ms:.3f}" for r, ms in zip(timing.ranks, timing.factorized_ms)))
    return timings
