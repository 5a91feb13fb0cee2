"""graphopt_plugins/quantize/sensitivity.py: the sweep's figures do not depend on how many sessions run side by side."""

from __future__ import annotations

import threading

from test_judging import _conv, _samples

from graphopt.verify.runner import stacked_outputs
from graphopt_plugins.quantize.sensitivity import default_workers, sweep


def test_the_sweep_measures_the_same_figures_in_order_with_any_number_of_workers():
    samples = _samples(3)
    reference = stacked_outputs(_conv(), samples, optimize=True)
    units = [5, 1, 3, 0, 2]
    held, most, lock = [0], [0], threading.Lock()

    def build(unit):
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        return _conv(scale=1.0 + 0.05 * (unit + 1))

    alone = sweep(units, lambda unit: _conv(scale=1.0 + 0.05 * (unit + 1)), samples, reference, workers=1)
    side_by_side = sweep(units, build, samples, reference, workers=2)
    assert list(side_by_side) == units and side_by_side == alone  # exactly the same figures
    assert alone[0] > alone[2] > alone[5]  # a larger change of the weights, a lower SQNR
    assert 1 <= default_workers() <= 4
