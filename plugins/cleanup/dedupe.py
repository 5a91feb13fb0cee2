"""Merging initializers that hold the same values."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir

__all__ = ["dedupe_initializers", "fingerprint"]


def dedupe_initializers(graph: gs.Graph) -> int:
    """Points readers of every duplicate constant at one copy, per graph level; returns duplicates merged.

    Does not merge: constants that are graph inputs or outputs (their names are the interface),
    constants of different dtype or shape that happen to share bytes, and a constant also read
    at another graph level (merging it with a body's copy would bind one name in two scopes).
    """
    merged = 0
    for owner in ir.iter_graphs(graph):
        for group in _same_type_and_shape(owner):
            keep: dict[tuple, gs.Constant] = {}
            for tensor in group:
                first = keep.setdefault(fingerprint(tensor.values), tensor)
                if first is not tensor and np.array_equal(first.values, tensor.values):
                    merged += bool(ir.replace_all_uses(tensor, first))
    return merged


def _same_type_and_shape(owner: gs.Graph) -> list[list[gs.Constant]]:
    """The level's mergeable constants, in groups of two or more of one dtype and shape, in read order.

    Grouped before any hashing: most weights have a shape of their own, and a constant's dtype
    and shape are known without loading its values.
    """
    interface = {id(t) for t in owner.inputs} | {id(t) for t in owner.outputs}
    local_nodes = {id(node) for node in owner.nodes}
    groups: dict[tuple, list[gs.Constant]] = {}
    seen: set[int] = set()
    for node in owner.nodes:
        for tensor in node.inputs:
            if not isinstance(tensor, gs.Constant) or id(tensor) in interface or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if any(id(reader) not in local_nodes for reader in tensor.outputs):
                continue
            groups.setdefault((tensor.dtype, tuple(tensor.shape)), []).append(tensor)
    return [group for group in groups.values() if len(group) > 1]


def fingerprint(values: np.ndarray) -> tuple:
    """(dtype, shape, digest of the bytes): equal arrays have equal fingerprints."""
    digest = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).digest()
    return (values.dtype.str, values.shape, digest)
