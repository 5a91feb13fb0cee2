"""The greedy allocator meets the target and spends it where the loss grows slowest."""

import numpy as np

from graphopt_plugins.prune.allocation import allocate, loss_curve


def test_allocation_meets_target_and_prefers_flat_curves():
    flat = loss_curve(np.r_[np.full(90, 0.01), np.full(10, 10.0)])  # 90 nearly free elements
    steep = loss_curve(np.ones(100))
    counts = allocate([flat, steep], target=80, step=0.05, cap=0.9)
    assert sum(counts) >= 80
    assert counts[0] > counts[1]
    assert all(count <= 90 for count in counts)


def test_zero_target_removes_nothing():
    assert allocate([loss_curve(np.ones(10))], target=0) == [0]
