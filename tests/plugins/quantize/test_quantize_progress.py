"""graphopt_plugins/quantize: the long loops (calibration, layer timing, sensitivity) report progress through ctx.track."""

from __future__ import annotations

import dataclasses

from quantize_support import calibration_for, single_op_model

import graphopt
from graphopt import convert
from graphopt_plugins.quantize import Quantize


@dataclasses.dataclass
class _RecordingContext(graphopt.PassContext):
    """A PassContext that notes which loops asked for a bar, and how long each claimed to be."""

    bars: list = dataclasses.field(default_factory=list)

    def track(self, items, desc, total=None):
        items = list(items)
        self.bars.append((desc, total, len(items)))
        return iter(items)


def _bars(model, **options) -> dict:
    ctx = _RecordingContext(opset=17, calibration=calibration_for(model, samples=3), model=model, progress=True)
    result = Quantize(Quantize.Options(**options)).run(convert.import_graph(model), ctx)
    assert result.stats["quantized"] == 0 and result.stats["kept_float"] == 1  # (its weight may be stored int8)
    return {desc: (total, seen) for desc, total, seen in ctx.bars}


def test_calibration_and_layer_timing_are_tracked():
    # A budget no int8 layer can meet: the layer is kept float one way or the other.
    bars = _bars(single_op_model("Conv", relu=True), budget="cos:0.9999999", latency="auto")
    assert bars["quantize: calibrating"] == (3, 3)
    assert bars["quantize: timing layers"] == (1, 1)


def test_the_sensitivity_sweep_is_tracked():
    bars = _bars(single_op_model("Conv", relu=True), budget="cos:0.9999999", latency="off")
    assert bars["quantize: layer sensitivity"] == (1, 1)
    assert "quantize: timing layers" not in bars
