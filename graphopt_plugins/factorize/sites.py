"""Where factorization can apply: MatMul/Gemm with a constant weight, and dense 2-D Conv.

Each site exposes its weight as a K×N matrix `W` such that the layer computes `X @ W` for rows
`X` of its input (a MatMul's last axis, a Conv's im2col patches), what the two factors would
cost at rank r, and how to rewrite it. Refused (logged at debug level, counted by reason):
grouped and depthwise Conv, non-float or non-constant weights, Gemm with transA, MatMul whose
constant is on the left or not 2-D, nodes this pass emitted (their names carry `MARK`).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries

__all__ = ["MARK", "Site", "find_sites", "is_factorized", "conv_pads"]

logger = logging.getLogger(__name__)

MARK = "/factorized"  # node-name infix of the two factors; a model holding it is left alone


def is_factorized(node: gs.Node) -> bool:
    return MARK in (node.name or "")


@dataclasses.dataclass(eq=False)
class Site:
    """One layer that could be factorized. `kind`: matmul, gemm, conv_channel, conv_input or conv_spatial.

    conv_input (input_split.py) keeps the im2col `weight` view; its factors are U (Cin×r, a 1×1
    conv) and V (r×kk·N, the k×k conv)."""

    index: int  # position among the sites, stable for a given model
    node: gs.Node
    kind: str
    weight: np.ndarray  # the K×N matrix view (float64)
    dtype: np.dtype  # the weight's own dtype, which the factors keep
    rows: int | None = None  # output positions over one sample: rows of X (spatial: of the 2nd conv)
    first_rows: int | None = None  # conv_spatial: output positions of the vertical conv
    input_pixels: int | None = None  # conv_input: positions the 1×1 conv runs on (all input pixels)

    @property
    def split_shape(self) -> tuple[int, int]:
        """The matrix the factors multiply to: K×N, or Cin×(kk·N) for conv_input."""
        k, n = self.weight.shape
        if self.kind != "conv_input":
            return k, n
        in_channels = self.node.inputs[1].shape[1]
        return in_channels, k // in_channels * n

    @property
    def name(self) -> str:
        return self.node.name or f"{self.node.op}#{self.index}"

    @property
    def input(self) -> gs.Tensor:
        return self.node.inputs[0]

    @property
    def full_rank(self) -> int:
        return min(self.split_shape)

    def params(self, rank: int | None = None) -> int:
        k, n = self.split_shape
        return k * n if rank is None else rank * (k + n)

    def macs(self, rank: int | None = None) -> int | None:
        if self.rows is None:
            return None
        k, n = self.weight.shape
        if rank is None:
            return self.rows * k * n
        if self.kind == "conv_spatial":
            return (self.first_rows or self.rows) * rank * k + self.rows * rank * n
        if self.kind == "conv_input":  # the 1×1 conv runs on every input pixel, the k×k on every output
            in_channels, wide = self.split_shape
            return (self.input_pixels or self.rows) * rank * in_channels + self.rows * rank * wide
        return self.rows * rank * (k + n)

    def max_saving_rank(self, margin: float, multiple: int) -> int:
        """The largest rank (a multiple of `multiple`) whose factors cost ≤ (1 − margin) × now, or 0."""
        limit = 1.0 - margin
        rank = self.full_rank - 1
        if multiple > 1:
            rank -= rank % multiple
        step = multiple if multiple > 1 else 1
        while rank > 0:
            macs, macs_now = self.macs(rank), self.macs()
            if self.params(rank) <= limit * self.params() and (macs is None or macs <= limit * macs_now):
                return rank
            rank -= step
        return 0


def find_sites(graph: gs.Graph, conv_mode: str, ops: set[str]) -> tuple[list[Site], dict[str, int]]:
    """The main graph's candidate layers, in graph order, and counts of refusals by reason.

    If/Loop/Scan bodies and local functions are deliberately left alone: their inputs cannot be
    captured on calibration data as the main graph's can.
    """
    sites: list[Site] = []
    refused: dict[str, int] = {}
    # An unrolled RNN runs one weight at every time step: factors per node would store it once
    # per step (20× the bytes in a CRNN), and fitting it per step costs as much again.
    users: dict[int, int] = {}
    for node in graph.nodes:
        if node.op in ops and len(node.inputs) > 1:
            users[id(node.inputs[1])] = users.get(id(node.inputs[1]), 0) + 1
    for node in graph.nodes:
        if node.op not in ops:
            continue
        found = _site_of(node, conv_mode)
        if not isinstance(found, str) and users.get(id(node.inputs[1]), 0) > 1:
            found = "weight shared with other nodes"
        if isinstance(found, str):
            refused[found] = refused.get(found, 0) + 1
            logger.debug("factorize: %s '%s' left alone: %s", node.op, node.name, found)
            continue
        kind, weight, dtype = found
        sites.append(Site(len(sites), node, kind, weight, dtype))
    return sites, refused


def _site_of(node: gs.Node, conv_mode: str):
    if is_factorized(node):
        return "already factorized"
    if len(node.inputs) < 2:
        return "no weight"
    value = graph_queries.constant_value(node.inputs[1])
    if value is None:
        return "weight is not constant"
    if value.dtype.kind != "f":
        return "weight is not float"
    dtype = value.dtype
    value = value.astype(np.float64)
    if node.op == "MatMul":
        if value.ndim != 2:
            return "weight is not 2-D"
        return "matmul", value, dtype
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "Gemm with transA"
        weight = value.T if node.attrs.get("transB", 0) else value
        return "gemm", weight * float(node.attrs.get("alpha", 1.0)), dtype
    if node.op == "Conv":
        if value.ndim != 4:
            return "Conv is not 2-D"
        if node.attrs.get("group", 1) != 1:
            return "grouped or depthwise Conv"
        out_channels, in_channels, kh, kw = value.shape
        if conv_mode == "input" and kh * kw > 1:
            return "conv_input", value.reshape(out_channels, -1).T, dtype
        if conv_mode == "spatial" and kh > 1 and kw > 1:
            if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                return "spatial split of an auto_pad SAME Conv"
            # M[(c, i), (o, j)] = W[o, c, i, j]: vertical factor × horizontal factor.
            return "conv_spatial", value.transpose(1, 2, 0, 3).reshape(in_channels * kh, out_channels * kw), dtype
        return "conv_channel", value.reshape(out_channels, -1).T, dtype
    return f"op {node.op} not handled"


def conv_pads(node: gs.Node, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of a 2-D Conv on an input of this size."""
    kernel = node.inputs[1].shape[2:] if node.inputs[1].shape else None
    kh, kw = kernel if kernel else node.attrs["kernel_shape"]
    strides = node.attrs.get("strides", [1, 1])
    dilations = node.attrs.get("dilations", [1, 1])
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in ((height, kh, strides[0], dilations[0]), (width, kw, strides[1], dilations[1])):
            out = math.ceil(size / s)
            pads.append(max((out - 1) * s + (k - 1) * d + 1 - size, 0))
        small = [p // 2 for p in pads]
        big = [p - p // 2 for p in pads]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return begin[0], begin[1], end[0], end[1]
    top, left, bottom, right = node.attrs.get("pads", [0, 0, 0, 0])
    return top, left, bottom, right
