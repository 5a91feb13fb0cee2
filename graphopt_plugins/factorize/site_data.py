"""What the pass learns about each site from the data before fitting: its row count, whether its
statistics can be fitted to, what it could save at most, and the whole model's totals."""

from __future__ import annotations

import dataclasses
import logging
import math

import onnx

from graphopt import tensor_shapes
from graphopt.model import infer_model_shapes
from graphopt.passes import keep_unless
from graphopt.statistics import gram_problem
from graphopt.summary import summarize
from graphopt_plugins.factorize.sites import Site
from graphopt_plugins.factorize.statistics import LayerData, conv_geometry

__all__ = ["potential", "fittable", "set_rows", "model_totals"]

logger = logging.getLogger(__name__)


def potential(site: Site, options) -> int:
    """The most MACs `site` could save (at the smallest rank, on the cheaper of the splits
    `conv=auto` may choose), 0 when no rank pays or its MACs are unknown."""
    kinds = [site] + ([dataclasses.replace(site, kind="conv_input")] if options.conv == "auto" and site.kind == "conv_channel" else [])
    best = 0
    for variant in kinds:
        if variant.macs() is None or variant.max_saving_rank(options.margin, options.rank_multiple) <= 0:
            continue
        best = max(best, variant.macs() - variant.macs(max(options.rank_multiple, 1)))
    return best


def fittable(sites: list[Site], data: LayerData) -> tuple[list[Site], list[dict]]:
    """(the sites whose input statistics can be fitted to, one `{node, reason}` per site left alone)."""
    kept, unfit = keep_unless(sites, lambda site: gram_problem(data.grams.get(site.index), data.rows_seen.get(site.index))
                              if site.index in data.grams and data.rows_seen.get(site.index) else None)
    for site, problem in unfit:
        logger.info("factorize: '%s' left alone: %s", site.name, problem)
    return kept, [{"node": site.name, "reason": problem} for site, problem in unfit]


def set_rows(sites: list[Site], data: LayerData | None) -> None:
    """Output positions per sample, from the captured inputs' shapes, else from static graph shapes."""
    for site in sites:
        shape = data.input_shapes.get(site.index) if data is not None else None
        if shape is None and tensor_shapes.is_static_shape(site.input.shape):
            shape = tuple(site.input.shape)
        if shape is None:
            continue
        if site.kind in ("matmul", "gemm"):
            site.rows = math.prod(shape[:-1])
        elif len(shape) == 4:
            batch, out_h, out_w, in_w = conv_geometry(site, shape)
            site.rows, site.first_rows = batch * out_h * out_w, batch * out_h * in_w
            site.input_pixels = batch * shape[2] * shape[3]


def model_totals(model: onnx.ModelProto, samples: dict | None, sites: list[Site]) -> dict[str, int]:
    """The whole model's MACs and parameters, shapes fixed to the samples' when the model's are dynamic."""
    static = model
    if samples:
        static = onnx.ModelProto()
        static.CopyFrom(model)
        del static.graph.value_info[:]
        for value in static.graph.input:
            if value.name in samples and value.type.HasField("tensor_type"):
                dims = value.type.tensor_type.shape.dim
                for dim, size in zip(dims, samples[value.name].shape[1:]):
                    dim.Clear()
                    dim.dim_value = int(size)
        static = infer_model_shapes(static)
    summary = summarize(static)
    # The summary counts a MatMul/Conv only where inference found its shapes; the sites' own
    # counts come from the captured activations, so add those it had to leave out.
    known = {value.name for value in list(static.graph.value_info) + list(static.graph.output)
             if value.type.tensor_type.HasField("shape")
             and all(dim.HasField("dim_value") for dim in value.type.tensor_type.shape.dim)}
    missed = sum(site.macs() or 0 for site in sites
                 if not ({site.node.outputs[0].name, site.input.name} <= known | set(samples or ())))
    return {"macs": int(summary["macs"]) + missed, "params": int(summary["parameters"])}
