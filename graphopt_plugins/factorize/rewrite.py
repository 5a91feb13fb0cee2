"""Replaces one site by its two factors, in place (O(uses), no graph scan).

- MatMul(X, W)            → MatMul(MatMul(X, U), V)
- Gemm(X, B, C)           → Gemm(MatMul(X, U), V, C, beta) — alpha and transB folded into U, V
- Conv k×k Cin→Cout       → Conv k×k Cin→r (the original's pads/strides/dilations) → Conv 1×1 r→Cout (+bias)
- Conv k×k, spatial split → Conv kh×1 Cin→r (vertical stride/pad/dilation) → Conv 1×kw r→Cout (+bias)
- Conv k×k, input split   → Conv 1×1 Cin→r → Conv k×k r→Cout (the original's attributes, +bias);
                            told apart from the channel split by U's rows (Cin, not Cin·kh·kw),
                            so a copy re-found with another `conv` mode is rewritten the same way

The original node is disconnected (the caller sweeps it and re-sorts the graph once); both new
nodes carry `MARK` in their names. Factors keep the weight's dtype.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import convert, graph_queries
from graphopt_plugins.factorize.lowrank import Factorization
from graphopt_plugins.factorize.sites import MARK, Site, find_sites

__all__ = ["factorize_site", "apply_factors", "factorized_copy"]


def factorize_site(graph: gs.Graph, site: Site, first: np.ndarray, second: np.ndarray,
                   bias: np.ndarray | None = None, taken: set[str] | None = None) -> None:
    """Rewrites `site` with U = `first` (K×r) and V = `second` (r×N); `bias` replaces the layer's own."""
    taken = taken if taken is not None else {n.name for n in graph.nodes} | set(graph.tensors())
    node, rank = site.node, first.shape[1]
    base = _fresh(taken, site.name)
    dtype = site.dtype
    hidden = gs.Variable(f"{base}{MARK}/hidden", dtype=node.outputs[0].dtype)
    output = node.outputs[0]
    old_bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if bias is not None:
        new_bias = gs.Constant(f"{base}{MARK}/bias", np.ascontiguousarray(bias.astype(dtype)))
    else:
        new_bias = old_bias
    u_name, v_name = f"{base}{MARK}/u", f"{base}{MARK}/v"
    if site.kind in ("matmul", "gemm"):
        u = gs.Constant(u_name, np.ascontiguousarray(first.astype(dtype)))
        v = gs.Constant(v_name, np.ascontiguousarray(second.astype(dtype)))
        first_node = gs.Node("MatMul", f"{base}{MARK}/u", inputs=[node.inputs[0], u], outputs=[hidden])
        if site.kind == "gemm" and new_bias is not None:
            attrs = {"beta": float(node.attrs.get("beta", 1.0))}
            second_node = gs.Node("Gemm", f"{base}{MARK}/v", attrs=attrs, inputs=[hidden, v, new_bias], outputs=[output])
        else:
            second_node = gs.Node("MatMul", f"{base}{MARK}/v", inputs=[hidden, v], outputs=[output])
    else:
        out_channels, in_channels, kh, kw = node.inputs[1].shape
        attrs = {key: value for key, value in node.attrs.items() if key != "kernel_shape"}
        if kh * kw > 1 and first.shape[0] == in_channels and site.kind != "conv_spatial":  # input split
            u_weight = first.T.reshape(rank, in_channels, 1, 1)
            v_weight = second.reshape(rank, kh, kw, out_channels).transpose(3, 0, 1, 2)
            first_attrs = {"kernel_shape": [1, 1]}
            second_attrs = {**attrs, "kernel_shape": [kh, kw]}
        elif site.kind == "conv_channel":
            u_weight = first.T.reshape(rank, in_channels, kh, kw)
            v_weight = second.T.reshape(out_channels, rank, 1, 1)
            first_attrs = {**attrs, "kernel_shape": [kh, kw]}
            second_attrs = {"kernel_shape": [1, 1]}
        else:  # conv_spatial: vertical then horizontal
            u_weight = first.T.reshape(rank, in_channels, kh, 1)
            v_weight = second.reshape(rank, out_channels, kw).transpose(1, 0, 2).reshape(out_channels, rank, 1, kw)
            strides = attrs.get("strides", [1, 1])
            dilations = attrs.get("dilations", [1, 1])
            top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0]) if attrs.get("auto_pad", "NOTSET") == "NOTSET" else (0, 0, 0, 0)
            first_attrs = {"kernel_shape": [kh, 1], "strides": [strides[0], 1], "dilations": [dilations[0], 1],
                           "pads": [top, 0, bottom, 0]}
            second_attrs = {"kernel_shape": [1, kw], "strides": [1, strides[1]], "dilations": [1, dilations[1]],
                            "pads": [0, left, 0, right]}
        u = gs.Constant(u_name, np.ascontiguousarray(u_weight.astype(dtype)))
        v = gs.Constant(v_name, np.ascontiguousarray(v_weight.astype(dtype)))
        first_node = gs.Node("Conv", f"{base}{MARK}/u", attrs=first_attrs, inputs=[node.inputs[0], u], outputs=[hidden])
        second_inputs = [hidden, v] + ([new_bias] if new_bias is not None else [])
        second_node = gs.Node("Conv", f"{base}{MARK}/v", attrs=second_attrs, inputs=second_inputs, outputs=[output])
    weight = node.inputs[1]
    node.inputs.clear()
    node.outputs.clear()  # the caller drops disconnected nodes and re-sorts once, after all sites
    source = weight.inputs[0] if weight.inputs else None
    if source is not None and source.op == "Constant" and not weight.outputs:
        source.outputs.clear()  # a weight held in a Constant node (paddle2onnx) goes with its reader
    graph.nodes.extend([first_node, second_node])


def _fresh(taken: set[str], name: str) -> str:
    candidate, index = name, 1
    while any(f"{candidate}{MARK}/{part}" in taken for part in ("u", "v")):
        candidate, index = f"{name}_{index}", index + 1
    taken.update(f"{candidate}{MARK}/{part}" for part in ("u", "v"))
    return candidate


def factorized_copy(model: onnx.ModelProto, conv: str, ops: set[str], factors: dict[int, tuple]) -> onnx.ModelProto:
    """A copy of `model` with the sites `find_sites(conv, ops)` numbers as in `factors` rewritten."""
    graph = convert.import_graph(model)
    sites, _ = find_sites(graph, conv, ops)
    apply_factors(graph, sites, None, factors)
    return convert.export_model(graph, model)


def apply_factors(graph: gs.Graph, sites: list[Site], fits: dict[int, Factorization] | None, factors: dict[int, tuple]) -> dict:
    """Rewrites the chosen sites with their (U, V); returns the per-layer report and totals.

    A layer's `error` is its own fit's relative output error on its original inputs.
    """
    taken = {node.name for node in graph.nodes} | set(graph.tensors())
    layers = []
    for site in sites:
        if site.index not in factors:
            continue
        first, second, *bias = factors[site.index]  # (U, V) or (U, V, the refitted bias)
        rank = first.shape[1]
        if fits is not None:
            fit = fits[site.index]
            layers.append({
                "node": site.name, "op": site.node.op, "kind": site.kind, "rank": rank, "full_rank": fit.full_rank,
                "params_before": site.params(), "params_after": site.params(rank),
                "macs_before": site.macs(), "macs_after": site.macs(rank),
                "error": round(float(fit.errors[rank]), 6), "error_on": fit.measured_on,
            })
        factorize_site(graph, site, first, second, bias[0] if bias else None, taken=taken)
    graph.nodes = [node for node in graph.nodes if node.inputs or node.outputs]
    graph_queries.toposort(graph)  # linear; graphsurgeon's toposort took seconds at 100k nodes
    known = [layer for layer in layers if layer["macs_before"] is not None]
    return {
        "params_before": sum(layer["params_before"] for layer in layers),
        "params_after": sum(layer["params_after"] for layer in layers),
        "macs_before": sum(layer["macs_before"] for layer in known),
        "macs_after": sum(layer["macs_after"] for layer in known),
        "layers": layers,
    }
