"""Which widths a pruned channel group may keep: those the CPU's blocked convolutions run fast.

onnxruntime runs convolutions on x86 in its NCHWc layout, in blocks of channels: 16 with
AVX-512F, 8 with AVX2 (MLAS's `NchwcBlockSize`). A convolution whose channel count is not a
multiple of the block falls back to the plain kernels, with reorders around it, and runs slower
than the wider convolution it came from: on this machine (AVX-512) a 6-layer 3×3 CNN at 64
channels ran in 43.1 ms, at 56 in 44.4 ms (12% fewer MACs, 3% slower), at 48 in 24.4 ms; 16
channels ran in 1.24 ms, 15 in 1.48 ms. So with `channel_multiple=0` (auto) a group keeps a
multiple of the block: one at least two blocks wide loses channels so that what remains is a
whole number of blocks (nearest to what was asked, never fewer than one block); one a single
block wide (a multiple of it, under two blocks) is left whole, since any cut would leave it off
the blocked kernels; a group off the block grid already is cut freely.
"""

from __future__ import annotations

import functools

__all__ = ["channel_block", "group_multiple", "removable"]


@functools.cache
def channel_block() -> int:
    """The NCHWc block of this host's onnxruntime convolutions: 16 with AVX-512F, else 8."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return 8
    return 16 if features.get("AVX512F") else 8


def group_multiple(size: int, multiple: int) -> int:
    """The step in which a group of `size` loses channels: `multiple` when set; with 0 (auto) the
    host's block for a group at least two blocks wide, `size` (never cut) for one a single block
    wide, 1 for a group off the block grid."""
    if multiple:
        return multiple
    block = channel_block()
    if size >= 2 * block:
        return block
    return size if size % block == 0 else 1


def removable(size: int, count: int, multiple: int, min_channels: int) -> int:
    """How many of a group's `size` channels to remove when `count` were asked for: a multiple
    of `multiple` (explicit), or with auto the count that leaves a whole number of blocks."""
    count = max(0, min(count, size - min_channels))
    step = group_multiple(size, multiple)
    if multiple or step == 1:
        return count - count % step
    if step == size or count == 0:
        return 0
    kept = max(step, int((size - count) / step + 0.5) * step)  # half up: the wider width
    while kept < min_channels:
        kept += step
    return max(0, size - kept)
