"""A link between two processes of the local runner: a ring of reused shared-memory slots.

Why not a multiprocessing queue: a queue pickles what it carries through a pipe, and a block
of shared memory made per sample is not much better: creating, faulting in, filling, copying
out and unlinking a fresh 5 MB block costs ~5 ms of CPU per hop on this 2-core machine —
more than the slack a 2-stage pipeline has. So each link owns a few blocks and reuses them:

- The **writer** (the driver for stage 0's inputs, else a stage worker) owns `slots` blocks of
  shared memory, used round robin. A sample's arrays go into the next free slot, after a small
  header (names, dtypes, shapes, offsets); a token of a few dozen bytes naming the slot goes
  down the `data` pipe. Arrays of Python objects (strings) are pickled into the slot.
- The **reader** maps each block once and returns numpy views of it, handed to onnxruntime
  as they are (no copy); when it is done with a sample it sends the slot back on the `freed`
  pipe. The writer reuses a slot only once it came back: that is the link's backpressure.
- A slot too small for a sample is replaced by a block twice as large (a new name, the old
  one unlinked), so shapes may change from sample to sample.

Nothing here blocks without a timeout: waits are `poll(timeout)` on a pipe, and a pipe never
holds more than `slots` tokens plus one end-or-error marker, far below its capacity, so a
send never blocks. Blocks are named `<prefix><link>_<slot>_<generation>` and live in
/dev/shm (Linux's POSIX shared memory); they are opened as files and mapped with `mmap`, with
no resource tracker, and the driver unlinks whatever is left under its prefix when the run
ends, however it ends.
"""

from __future__ import annotations

import glob
import mmap
import os
import pickle
from multiprocessing.connection import Connection

import numpy as np

__all__ = ["RingWriter", "RingReader", "remove_blocks", "SHM_DIR"]

SHM_DIR = "/dev/shm"
_ALIGN = 64  # every array starts on a cache line (and satisfies any dtype's alignment)
_FREED = b"\x01"


def _aligned(size: int) -> int:
    return (size + _ALIGN - 1) // _ALIGN * _ALIGN


class RingWriter:
    """The producing end of a link; `data` and `freed` are this side's ends of the link's two pipes."""

    def __init__(self, data: Connection, freed: Connection, *, slots: int, name: str):
        self._data, self.freed = data, freed
        self._name = name
        self._free = slots
        self._next = 0
        self._blocks: list[tuple[str, mmap.mmap] | None] = [None] * slots
        self._generation = 0

    def slot_ready(self, timeout: float = 0.0) -> bool:
        """True when a slot is free, waiting up to `timeout` seconds for the reader to return one."""
        if not self._free and self.freed.poll(timeout):
            self._collect_freed()
        return self._free > 0

    def write(self, seq: int, arrays: dict[str, np.ndarray]) -> None:
        """Puts a sample into the next slot and tells the reader; call only after `slot_ready()`."""
        if not self._free:
            raise RuntimeError("RingWriter.write without a free slot")
        layout, blobs, offset = [], {}, 0
        for key, array in arrays.items():
            if array.dtype.hasobject:
                blob = pickle.dumps(array, protocol=5)
                blobs[key] = blob
                layout.append((key, None, None, offset, len(blob)))
                offset += _aligned(len(blob))
            else:
                layout.append((key, array.dtype.str, array.shape, offset, array.nbytes))
                offset += _aligned(array.nbytes)
        header = pickle.dumps(layout, protocol=5)
        start = _aligned(len(header))
        name, block = self._block_for(self._next, start + max(offset, 1))
        block[:len(header)] = header
        for (key, dtype, shape, at, size) in layout:
            if dtype is None:
                block[start + at:start + at + size] = blobs[key]
            else:
                np.copyto(np.ndarray(shape, np.dtype(dtype), buffer=block, offset=start + at), arrays[key], casting="no")
        self._data.send(("data", seq, self._next, name, len(header)))
        self._free -= 1
        self._next = (self._next + 1) % len(self._blocks)

    def send_marker(self, item: tuple) -> None:
        """An end or error marker, in order after the samples already sent."""
        self._data.send(item)

    def _collect_freed(self) -> None:
        while self.freed.poll(0):
            self.freed.recv_bytes()
            self._free += 1

    def _block_for(self, slot: int, size: int) -> tuple[str, mmap.mmap]:
        current = self._blocks[slot]
        if current is not None and len(current[1]) >= size:
            return current
        if current is not None:  # the reader gave this slot back, so it has mapped it already
            _unlink(current[0])
            size = max(size, 2 * len(current[1]))
        self._generation += 1
        name = f"{self._name}_{slot}_{self._generation}"
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            block = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._blocks[slot] = (name, block)
        return name, block


class RingReader:
    """The consuming end of a link; `data` and `freed` are this side's ends of the link's two pipes."""

    def __init__(self, data: Connection, freed: Connection):
        self.data, self._freed = data, freed
        self._maps: dict[int, tuple[str, mmap.mmap]] = {}

    def take(self) -> tuple:
        """The next item (call when `data.poll()` said one is there): a marker as it was sent,
        or `("data", seq, {name: array})` whose arrays are read-only views of the slot, valid
        until `release()`."""
        item = self.data.recv()
        if item[0] != "data":
            return item
        _, seq, slot, name, header_size = item
        known = self._maps.get(slot)
        if known is None or known[0] != name:
            self._maps[slot] = known = (name, _map(name))  # a dropped mapping unmaps once its views are gone
        block = known[1]
        layout = pickle.loads(block[:header_size])
        start = _aligned(header_size)
        arrays = {}
        for key, dtype, shape, at, size in layout:
            if dtype is None:
                arrays[key] = pickle.loads(block[start + at:start + at + size])
            else:
                view = np.ndarray(shape, np.dtype(dtype), buffer=block, offset=start + at)
                view.flags.writeable = False
                arrays[key] = view
        return ("data", seq, arrays)

    def release(self) -> None:
        """Gives the oldest slot taken back to the writer; its views must not be used after."""
        try:
            self._freed.send_bytes(_FREED)
        except BrokenPipeError:
            pass  # the writer has finished (it sent its end marker and exited): nobody waits for the slot


def _map(name: str) -> mmap.mmap:
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def remove_blocks(prefix: str) -> None:
    """Unlinks every block of a run (the driver calls it once the workers are gone)."""
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(prefix) + "*")):
        try:
            os.unlink(path)
        except OSError:
            pass
