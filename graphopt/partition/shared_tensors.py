"""Handing tensors between the local runner's processes through shared memory.

A multiprocessing queue pickles what it carries through a pipe, 64 KiB at a time: a 3 MB
activation takes tens of milliseconds on a busy 2-core machine, longer than the stage that
made it. So the queues carry only a small descriptor; the arrays travel in one shared-memory
block per item, written once by the producer and copied out (then unlinked) by the consumer.
Small items, and dtypes that are not plain numbers, still travel inline.

Block names are `<prefix><stage>_<sample>`: the driver removes whatever is left under its
prefix when a run ends early, so an aborted run leaks nothing. Blocks live in /dev/shm
(Linux's POSIX shared memory), where the consumer removes each one it has read. The producer's resource tracker is
told to forget a block (it belongs to the consumer, which unlinks it), so the producer's exit
does not remove a block still in flight.
"""

from __future__ import annotations

import glob
import os
from multiprocessing import resource_tracker, shared_memory

import numpy as np

__all__ = ["pack", "unpack", "remove_leftovers"]

_INLINE_BYTES = 64 * 1024


def pack(values: dict[str, np.ndarray], name: str) -> tuple:
    """A picklable descriptor of `values`; arrays over 64 KiB go into a block named `name`."""
    arrays = {key: np.ascontiguousarray(value) for key, value in values.items()}
    total = sum(array.nbytes for array in arrays.values())
    if total < _INLINE_BYTES or any(array.dtype.hasobject for array in arrays.values()):
        return ("inline", arrays)
    block = shared_memory.SharedMemory(name=name, create=True, size=total)
    _forget(block)
    layout, offset = [], 0
    for key, array in arrays.items():
        block.buf[offset:offset + array.nbytes] = array.reshape(-1).view(np.uint8)
        layout.append((key, array.dtype.str, array.shape, offset))
        offset += array.nbytes
    block.close()
    return ("shared", name, layout)


def unpack(descriptor: tuple) -> dict[str, np.ndarray]:
    """The arrays of a descriptor; a shared block is copied out and removed."""
    if descriptor[0] == "inline":
        return descriptor[1]
    _, name, layout = descriptor
    block = shared_memory.SharedMemory(name=name)
    _forget(block)  # a consumer killed before it unlinks leaves it to the driver's clean-up, not a tracker warning
    try:
        return {
            key: np.frombuffer(block.buf, dtype=np.dtype(dtype), count=int(np.prod(shape, dtype=np.int64)), offset=offset).reshape(shape).copy()
            for key, dtype, shape, offset in layout
        }
    finally:
        block.close()
        _remove(name)


def _remove(name: str) -> None:
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:
        pass


def remove_leftovers(prefix: str) -> None:
    """Unlinks the blocks of an ended run that no consumer took (POSIX shared memory lives in /dev/shm)."""
    for path in glob.glob(os.path.join("/dev/shm", glob.escape(prefix) + "*")):
        try:
            os.unlink(path)
        except OSError:
            pass


def _forget(block: shared_memory.SharedMemory) -> None:
    # Before Python 3.13 the process that creates a block registers it with its resource
    # tracker, which unlinks it when that process exits: the consumer owns it instead.
    try:
        resource_tracker.unregister(block._name, "shared_memory")  # noqa: SLF001 - the name the tracker knows
    except Exception:  # noqa: BLE001 - the tracker is a nicety; a block it never knew is fine
        pass
