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
    and constants of different dtype or shape that happen to share bytes.
    """
    merged = 0
    for owner in ir.iter_graphs(graph):
        interface = {id(t) for t in owner.inputs} | {id(t) for t in owner.outputs}
        keep: dict[tuple, gs.Constant] = {}
        for node in owner.nodes:
            for tensor in list(node.inputs):
                if not isinstance(tensor, gs.Constant) or id(tensor) in interface:
                    continue
                key = fingerprint(tensor.values)
                first = keep.setdefault(key, tensor)
                if first is not tensor and np.array_equal(first.values, tensor.values):
                    merged += bool(ir.replace_all_uses(tensor, first))
    return merged


def fingerprint(values: np.ndarray) -> tuple:
    """(dtype, shape, digest of the bytes): equal arrays have equal fingerprints."""
    digest = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).digest()
    return (values.dtype.str, values.shape, digest)
