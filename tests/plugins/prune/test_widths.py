"""graphopt_plugins/prune/widths.py: pruned groups keep whole blocks of the blocked convolutions."""

from __future__ import annotations

import pytest

from graphopt_plugins.prune import widths


@pytest.fixture(params=[8, 16])
def block(request, monkeypatch):
    monkeypatch.setattr(widths, "channel_block", lambda: request.param)
    return request.param


def test_auto_leaves_a_whole_number_of_blocks_nearest_to_what_was_asked(block):
    assert widths.removable(64, 5, 0, 1) == (8 if block == 8 else 0)  # 59 kept: nearest whole blocks 56 / 64
    assert widths.removable(64, 9, 0, 1) == (8 if block == 8 else 16)  # 55 kept -> 56 / 48
    assert widths.removable(72, 4, 0, 1) == (0 if block == 8 else 8)  # 72 is off the 16-grid: 64 is the nearest
    for size, count in [(64, 5), (64, 30), (96, 50), (72, 4), (200, 199), (48, 20)]:
        kept = size - widths.removable(size, count, 0, 1)
        assert kept % block == 0 or kept == size, (size, count, kept)
        assert kept >= block


def test_auto_never_cuts_a_group_one_block_wide_and_cuts_one_off_the_grid_freely(block):
    assert widths.removable(block, block // 2, 0, 1) == 0 and widths.group_multiple(block, 0) == block
    assert widths.removable(block + 3, 2, 0, 1) == (2 if block + 3 < 2 * block else 0)
    assert widths.removable(5, 2, 0, 1) == 2 and widths.group_multiple(5, 0) == 1


def test_an_explicit_multiple_is_a_step_and_min_channels_holds(block):
    assert widths.removable(64, 13, 8, 1) == 8 and widths.removable(64, 13, 1, 1) == 13
    assert widths.removable(64, 63, 1, 10) == 54
    assert widths.removable(64, 60, 0, 20) == 64 - (24 if block == 8 else 32)  # whole blocks, at least min_channels kept
    assert widths.removable(64, 0, 0, 1) == 0


def test_the_host_block_is_what_onnxruntime_uses():
    assert widths.channel_block() in (8, 16)
