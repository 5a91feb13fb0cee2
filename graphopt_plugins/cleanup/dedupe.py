"""Merging initializers that hold the same values."""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import graph_queries

__all__ = ["dedupe_initializers", "fingerprint"]


def dedupe_initializers(graph: gs.Graph) -> int:
    """Points readers of every duplicate constant at one copy, per graph level; returns duplicates merged.

    Does not merge: constants that are graph inputs or outputs (their names are the interface),
    constants of different dtype or shape that happen to share bytes, and a constant also read
    at another graph level (merging it with a body's copy would bind one name in two scopes).
    """
    merged = 0
    for owner in graph_queries.iter_graphs(graph):
        for group in _same_type_and_shape(owner):
            for candidates in _same_sample(group):
                # By a checksum, each match confirmed value by value: a checksum's collision only
                # costs a comparison. (CSE keys by `fingerprint` unconfirmed, so that stays a digest.)
                kept: dict[tuple, list[gs.Constant]] = {}
                for tensor in candidates:
                    values = tensor.values
                    same = kept.setdefault(_checksum(values), [])
                    first = next((other for other in same if np.array_equal(other.values, values)), None)
                    if first is None:
                        same.append(tensor)
                    else:
                        merged += bool(graph_queries.replace_all_uses(tensor, first))
    return merged


def _checksum(values: np.ndarray) -> tuple:
    """(dtype, shape, CRC-32 of the bytes): five times cheaper than `fingerprint`'s digest on a
    conv weight, where the light_* models hold hundreds of look-alike weights."""
    return (values.dtype.str, values.shape, zlib.crc32(np.ascontiguousarray(values)))


_SAMPLED_ELEMENTS = 64


def _same_sample(group: list[gs.Constant]) -> list[list[gs.Constant]]:
    """`group` split by the values at a few fixed positions, keeping splits of two or more.

    Weights of one shape that differ are told apart by 64 values each, where hashing them
    whole cost 0.26 s on 92 MB of 1024x1024 weights; only look-alikes get hashed.
    """
    splits: dict[bytes, list[gs.Constant]] = {}
    for tensor in group:
        flat = np.ravel(tensor.values)
        stride = max(1, flat.size // _SAMPLED_ELEMENTS)
        splits.setdefault(flat[::stride][:_SAMPLED_ELEMENTS].tobytes(), []).append(tensor)
    return [split for split in splits.values() if len(split) > 1]


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
