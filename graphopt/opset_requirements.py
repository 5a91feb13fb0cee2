"""A pass that needs a newer opset gets it: the `opset` pass put before it, or a clear refusal.

A pass declares `requires_opset` (or overrides `required_opset()`). Before the first pass whose
need the model does not meet, the first-party `opset` pass converts to the highest need of the
passes still to run (one conversion serves them all), reported as an `implicit` entry and a
warning. A model the converter cannot convert is exit 2 naming both passes, never a skipped pass.
"""

from __future__ import annotations

import logging

import onnx

from graphopt.errors import InputError, UsageError
from graphopt.passes import Pass, PassContext, PassResult
from graphopt.registry import PassRegistry

__all__ = ["with_opset_conversions", "ImplicitConversion", "conversion_note", "refused_conversion", "pass_warnings",
           "undo_unused_conversion"]

logger = logging.getLogger(__name__)

CONVERTER = "opset"  # the first-party pass that converts (graphopt_plugins/opset)


class ImplicitConversion(Pass):
    """The `opset` pass the pipeline put in because a later pass needs a newer opset."""

    name = CONVERTER
    lossless = True

    def __init__(self, converter: Pass, needed_by: str, needed: int, current: int):
        super().__init__(converter.options)
        self.converter, self.needed_by, self.needed, self.current = converter, needed_by, needed, current

    def run(self, graph, ctx: PassContext) -> PassResult:
        logger.warning("converting the model from opset %d to %d: pass '%s' needs opset %d",
                       self.current, self.converter.options.target, self.needed_by, self.needed)
        return self.converter.run(graph, ctx)


def with_opset_conversions(passes: list[Pass], registry: PassRegistry, model: onnx.ModelProto) -> list[Pass]:
    """`passes`, with an `ImplicitConversion` before each pass whose opset need is not met there
    (a user's own `opset` pass meets the needs up to its target)."""
    planned, current = [], next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for index, pass_ in enumerate(passes):
        if pass_.name == CONVERTER and not isinstance(pass_, ImplicitConversion):
            current = max(current, int(getattr(pass_.options, "target", current)))
        needed = pass_.required_opset()
        if needed > current:
            target = max(later.required_opset() for later in passes[index:])
            planned.append(ImplicitConversion(_converter(registry, pass_, needed, current, target), pass_.name, needed, current))
            current = target
        planned.append(pass_)
    return planned


def _converter(registry: PassRegistry, pass_: Pass, needed: int, current: int, target: int) -> Pass:
    try:
        cls = registry.get(CONVERTER)
    except UsageError as error:
        raise InputError(f"pass '{pass_.name}' needs opset {needed}; the model has {current}, "
                         f"and no '{CONVERTER}' pass is registered to convert it") from error
    try:
        options = cls.Options(target=target)
    except (TypeError, ValueError) as error:  # e.g. a need past the newest opset this onnx knows
        raise InputError(f"pass '{pass_.name}' needs opset {needed}; the model has {current} and cannot be converted: {error}") from error
    return cls(options)


def conversion_note(pass_: Pass) -> dict:
    """What a report entry says of an implicit conversion (nothing for any other pass)."""
    if not isinstance(pass_, ImplicitConversion):
        return {}
    return {"implicit": {"for": pass_.needed_by, "needs_opset": pass_.needed, "from_opset": pass_.current}}


def refused_conversion(pass_: Pass, error: Exception) -> InputError | None:
    """The exit-2 error for an implicit conversion the converter refused, else None."""
    if not isinstance(pass_, ImplicitConversion):
        return None
    return InputError(f"pass '{pass_.needed_by}' needs opset {pass_.needed}; the model has {pass_.current} "
                      f"and cannot be converted: {error}")


def undo_unused_conversion(stages: list, unconverted: tuple | None) -> tuple | None:
    """`unconverted` (model, nodes, bytes) when the last accepted stage is an implicit conversion (the
    passes it was for changed nothing, and a converted model can run slower: opset 11 -> 13 on a
    small CNN): its stage dropped, its entry marked rolled back; else None."""
    if unconverted is None or not stages or stages[-1].entry.get("implicit") is None:
        return None
    entry = stages.pop().entry
    entry.update(status="rolled_back", rolled_back=True, reason=f"pass '{entry['implicit']['for']}' changed nothing at the new opset")
    return unconverted


def pass_warnings(entries: list[dict]) -> list[str]:
    """The report's warnings from the pass entries: implicit conversions, and what passes warned of
    (`PassResult.stats["warnings"]`, a list of strings)."""
    warnings = []
    for entry in entries:
        implicit = entry.get("implicit")
        if implicit and entry.get("status") == "accepted":
            details = entry.get("details", {})
            warnings.append(f"converted the model from opset {details.get('from', implicit['from_opset'])} to "
                            f"{details.get('to')} for pass '{implicit['for']}' (needs opset {implicit['needs_opset']})")
        warnings += [f"{entry['name']}: {text}" for text in entry.get("details", {}).get("warnings", [])]
    return warnings
