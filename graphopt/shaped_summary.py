"""A model's summary whose MACs are counted at concrete input shapes.

Shape inference leaves every tensor downstream of a symbolic dim without a size, so a model
with a dynamic batch or image side would count 0 MACs. The summary keeps the model's own
(dynamic) interface; only the MAC count is taken on a copy whose inputs are frozen at the
given shapes, or at the ones `verify.input_shapes` chooses, and `macs_shapes` says which.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from graphopt.model_io import infer_model_shapes
from graphopt.summary import summarize
from graphopt.verify.input_shapes import choose_input_shapes, freeze_input_shapes

__all__ = ["summarize_at_shapes"]


def summarize_at_shapes(model: onnx.ModelProto, given: Mapping[str, tuple[int, ...]] | None = None) -> dict:
    """`summary.summarize` of `model`, MACs counted at `given` shapes (chosen where not given)."""
    given = dict(given or {})
    summary = summarize(infer_model_shapes(model), size_of=model)
    chosen = choose_input_shapes(model, given, origin="given")
    dynamic = {name: shape for name, shape in chosen.items() if shape.chosen or name in given}
    if not dynamic:
        return summary
    frozen = infer_model_shapes(freeze_input_shapes(model, {name: c.shape for name, c in chosen.items()}))
    at_shapes = summarize(frozen, size=summary["bytes"])
    summary.update(macs=at_shapes["macs"], macs_unknown=at_shapes["macs_unknown"],
                   macs_shapes={name: {"shape": list(c.shape), "reason": c.to_dict()["reason"]} for name, c in dynamic.items()})
    return summary
