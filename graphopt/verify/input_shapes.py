"""Concrete shapes for a model's inputs when the model leaves some dims symbolic or unknown.

Verification, calibration-free passes, `bench` and `inspect` need one concrete shape per input.
Given shapes win; every other dim is chosen, with a reason a user can read:

1. a dim the model fixes stays as it is;
2. a symbol another input (or a given shape) already settled takes that value, so `ids` and
   `mask` sharing "sequence" stay equal;
3. what the model says (`verify.shape_hints`): a constant Reshape target the input flows into,
   the value_info of the tensor it passes into, metadata (`imgsz`, `image_size`, or a key
   named like the symbol);
4. else a default for the dim's role, with fallbacks (`ROLE_DEFAULTS`; image sides rounded up to
   a multiple of the model's total stride, at least 32).

`candidate_shapes` yields the first choice, then the fallbacks; `confirmed_shapes` keeps the
first one onnxruntime runs the model on. Only `freeze_input_shapes` (asked by the user) changes
the model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping

import numpy as np
import onnx

from graphopt.errors import UsageError, did_you_mean
from graphopt.parameter_names import parameter
from graphopt.verify.feeds import InputSpec, generate_feeds, input_specs
from graphopt.verify.shape_hints import axis_strides, metadata_sizes, reshape_target, value_info_dims

__all__ = ["ROLE_DEFAULTS", "ChosenShape", "choose_input_shapes", "candidate_shapes", "confirmed_shapes", "run_shapes",
           "freeze_input_shapes"]

# The values tried for a dim of each role, first choice first (image sides are rounded up to the
# model's total stride). Documented in docs/verifier.md.
ROLE_DEFAULTS: dict[str, tuple[int, ...]] = {
    "batch": (1,),
    "channels": (3, 1),
    "image side": (224, 320, 448, 640),
    "sequence": (128, 64, 32, 16, 256, 512),
    "audio samples": (16000, 8000, 32000),
    "time frames": (100, 50, 200),
    "other": (32, 16, 8, 1, 64, 128, 256),
}
_BATCH_NAMES = re.compile(r"^(n|b|bs|batch.*|.*_?batch(_?size)?|num_?images|unk__\d+)$", re.IGNORECASE)
_SEQUENCE_NAMES = re.compile(r"seq|token|len|words?|text|sentence", re.IGNORECASE)
_AUDIO_NAMES = re.compile(r"audio|wave|wav|speech|samples|pcm|input_values", re.IGNORECASE)
_TIME_NAMES = re.compile(r"time|frames?|steps", re.IGNORECASE)
_SPATIAL_NAMES = re.compile(r"height|width|^h$|^w$|side|size|img|image", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ChosenShape:
    """One input's concrete shape, a reason per dim, and the role of each chosen dim (None: not chosen)."""

    name: str
    shape: tuple[int, ...]
    reasons: tuple[str, ...]
    roles: tuple[str | None, ...]

    @property
    def chosen(self) -> bool:
        return any(role is not None for role in self.roles)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "reason": "; ".join(dict.fromkeys(self.reasons)) or "a scalar", "dims": [
            {"size": size, "reason": reason} for size, reason in zip(self.shape, self.reasons)]}


def choose_input_shapes(
    model: onnx.ModelProto, given: Mapping[str, tuple[int, ...]] | None = None, *, origin: str = "given"
) -> dict[str, ChosenShape]:
    """The first-choice concrete shape of every input (see the module docstring)."""
    return next(candidate_shapes(model, given, origin=origin))


def candidate_shapes(
    model: onnx.ModelProto, given: Mapping[str, tuple[int, ...]] | None = None, *, origin: str = "given"
) -> Iterator[dict[str, ChosenShape]]:
    """The first choice, then the fallbacks: attempt k takes each defaulted dim's k-th candidate."""
    given = dict(given or {})
    specs = input_specs(model)
    plans = _plan(model, specs, given, origin)
    attempts = max((len(values) for plan in plans.values() for values, _, _ in plan), default=1)
    for attempt in range(attempts):
        yield {spec.name: _at_attempt(spec.name, plans[spec.name], attempt) for spec in specs}


def confirmed_shapes(
    model: onnx.ModelProto, given: Mapping[str, tuple[int, ...]] | None = None, *, origin: str = "given", seed: int = 0,
    runs=None, confirmation: dict | None = None,
) -> dict[str, ChosenShape]:
    """The first candidate on which onnxruntime runs `model`; a UsageError naming the inputs if none.

    `runs(model, feeds, cache) -> error message | None` tries a candidate; by default one
    onnxruntime session (optimizations off) that leaves the run's `"feeds"` and `"outputs"` in
    `cache`. `confirmation` is that cache for a caller that wants them (the verifier's reference
    outputs); its `"serialised"`, when given, is `model` as bytes for the session to read.
    """
    runs = runs or _runs_in_onnxruntime
    candidates = candidate_shapes(model, given, origin=origin)
    first = next(candidates)
    if not any(shape.chosen for shape in first.values()):
        return first  # nothing was guessed: the pipeline's own reference run is the check
    failures = []
    session_cache: dict = confirmation if confirmation is not None else {}
    for attempt in (first, *candidates):
        shapes = {name: shape.shape for name, shape in attempt.items()}
        error = runs(model, generate_feeds(model, shapes, seed=seed), session_cache)
        if error is None:
            if failures:
                return {name: _noting(shape, f"{len(failures)} earlier candidate(s) failed in onnxruntime")
                        for name, shape in attempt.items()}
            return attempt
        failures.append((shapes, error))
    tried = "; ".join(", ".join(f"{n}={','.join(map(str, s))}" for n, s in shapes.items()) for shapes, _ in failures[:3])
    raise UsageError(f"onnxruntime cannot run the model at any shape graphopt chose ({tried}): {failures[0][1]}; "
                     f"give the shapes with {parameter('input_shapes')}")


def run_shapes(
    model: onnx.ModelProto, given: Mapping[str, tuple[int, ...]], feeds: Mapping[str, np.ndarray] | None, *,
    feeds_from: str | None, seed: int = 0, confirm: bool = True, confirmation: dict | None = None,
) -> dict[str, ChosenShape]:
    """The shapes a run verifies (and `--freeze-shapes` writes): the per-sample shapes of `feeds`
    when given (a given shape that contradicts them is a UsageError naming both), else the
    chosen ones, confirmed in onnxruntime when `confirm` (`confirmation`: as `confirmed_shapes`)."""
    if feeds is None:
        if confirm:
            return confirmed_shapes(model, given, seed=seed, confirmation=confirmation)
        return choose_input_shapes(model, given)
    where = parameter(feeds_from or "inputs")
    for name, shape in given.items():
        if name in feeds and tuple(feeds[name].shape[1:]) != tuple(shape):
            raise UsageError(f"{parameter('input_shapes')} {name}={','.join(map(str, shape))} contradicts {where}, "
                             f"whose '{name}' samples are {','.join(map(str, feeds[name].shape[1:]))}")
    return {name: ChosenShape(name, tuple(int(d) for d in array.shape[1:]), (f"from {where}",) * (array.ndim - 1),
                              (None,) * (array.ndim - 1)) for name, array in feeds.items()}


def freeze_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], *,
                        in_place: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose inputs declare `shapes` (what `--freeze-shapes` writes);
    `model` itself, changed so, when `in_place` (a copy the caller made)."""
    frozen = model
    if not in_place:
        frozen = onnx.ModelProto()
        frozen.CopyFrom(model)
    for value in frozen.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[value.name]:
            dims.add().dim_value = int(size)
    # Shapes inferred for the dynamic interface would contradict the frozen one.
    del frozen.graph.value_info[:]
    return frozen


# --- planning ---------------------------------------------------------------------------------

def _plan(model, specs: list[InputSpec], given: dict, origin: str) -> dict[str, list[tuple[tuple[int, ...], str, str | None]]]:
    """Per input, per dim: (candidate values, reason, role or None when not a default)."""
    unknown = sorted(set(given) - {spec.name for spec in specs})
    if unknown:
        hint = did_you_mean(unknown[0], [spec.name for spec in specs])
        raise UsageError(f"{parameter('input_shapes')} names no model input: {', '.join(map(repr, unknown))}{hint} "
                         f"(model inputs: {', '.join(spec.name for spec in specs)})")
    for name, shape in given.items():
        spec = next((s for s in specs if s.name == name), None)
        if spec is not None and len(shape) != len(spec.dims):
            declared = ",".join(str(d) if isinstance(d, int) else (d or "?") for d in spec.dims)
            raise UsageError(f"{parameter('input_shapes')} {name}={','.join(map(str, shape))} does not fit its declared shape [{declared}]")
    settled = _settled_symbols(specs, given)
    metadata = metadata_sizes(model)
    plans = {}
    for spec in specs:
        if spec.name in given:
            plans[spec.name] = [((int(size),), f"{origin}", None) for size in given[spec.name]]
            continue
        reshape = reshape_target(model, spec)
        declared_next = value_info_dims(model, spec)
        roles = _roles(model, spec)
        plan = []
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, int):
                plan.append(((dim,), "fixed in the model", None))
            elif _symbol(dim) and dim in settled:
                value, source = settled[dim]
                plan.append(((value,), f"'{dim}' as in {source}", None))
            elif _symbol(dim) and dim in metadata:
                plan.append(((metadata[dim],), f"'{dim}' from the model's metadata", None))
            elif declared_next is not None and declared_next[axis] is not None:
                plan.append(((declared_next[axis],), "the value_info of the tensor it flows into", None))
            elif reshape is not None and reshape[axis] > 0:
                plan.append(((reshape[axis],), "the constant Reshape target it flows into", None))
            elif roles[axis] == "image side" and "image side" in metadata:
                plan.append(((metadata["image side"],), "image size from the model's metadata", None))
            else:
                plan.append(_default(model, spec, axis, roles[axis]))
        plans[spec.name] = plan
    return _shared_symbols_alike(specs, plans)


def _default(model, spec: InputSpec, axis: int, role: str) -> tuple[tuple[int, ...], str, str]:
    label = f"'{spec.dims[axis]}'" if _symbol(spec.dims[axis]) else "unknown"
    values = ROLE_DEFAULTS[role]
    if role == "image side":
        strides = axis_strides(model, spec.name)
        side_axes = [a for a in range(len(spec.dims)) if a >= 1 and a != (1 if len(spec.dims) == 4 and _channels_first(spec) else 3)]
        own = strides[0] if side_axes and axis == side_axes[0] else strides[-1]
        multiple = max(32, own)
        rounded = tuple(dict.fromkeys(math.ceil(side / multiple) * multiple for side in values))
        if own >= 16 and own > 2 * min(strides):
            # Downsampled far more on this axis than the other (strides (2, 1)): a recognizer
            # that ends at size 1 here, whose side is the stride itself.
            return (own, *tuple(dict.fromkeys(own * k for k in (2, 3, 4)))), \
                f"{label}: image side downsampled {own}x (the other side {min(strides)}x), one stride", role
        return rounded, f"{label}: image side, a multiple of the model's total stride {multiple}", role
    if role == "batch":
        return values, f"{label}: batch-like leading dim", role
    return values, f"{label}: {role} default", role


def _symbol(dim) -> str | None:
    """A dim's symbol, None for a fixed or unknown dim ("?" is how some exporters write unknown)."""
    return dim if isinstance(dim, str) and dim and dim != "?" else None


def _channels_first(spec: InputSpec) -> bool:
    dims = spec.dims
    return isinstance(dims[1], int) and dims[1] <= 4 or not (isinstance(dims[3], int) and dims[3] <= 4)


def _roles(model, spec: InputSpec) -> list[str]:
    """A role per dim of `spec`, from its rank, dtype, declared sizes and symbol names."""
    rank, dims = len(spec.dims), spec.dims
    names = [_symbol(d) or "" for d in dims]
    integer = np.issubdtype(spec.dtype, np.integer)
    roles = ["other"] * rank
    for axis in range(rank):
        if _BATCH_NAMES.match(names[axis]) or (axis == 0 and rank >= 2):
            roles[axis] = "batch"
    if rank == 4 and not integer:
        channels_first = _channels_first(spec)
        spatial = (2, 3) if channels_first else (1, 2)
        roles[1 if channels_first else 3] = "channels"
        for axis in spatial:
            roles[axis] = "image side"
    elif rank == 3 and not integer:
        # (batch, features, frames) when the last dim is the free one, else (batch, tokens, hidden).
        if _TIME_NAMES.search(names[2]) or (isinstance(dims[1], int) and not isinstance(dims[2], int)):
            roles[2] = "time frames"
        else:
            roles[1] = "sequence"
    elif rank in (1, 2) and roles[rank - 1] != "batch":  # a rank-1 `batch` input (lengths) stays batch
        last = rank - 1
        if not integer and (_AUDIO_NAMES.search(spec.name) or _AUDIO_NAMES.search(names[last])):
            roles[last] = "audio samples"  # before the sequence names: wav2vec's is "sequence_length"
        elif integer or _SEQUENCE_NAMES.search(names[last]):
            roles[last] = "sequence"
        elif _TIME_NAMES.search(names[last]):
            roles[last] = "time frames"
    for axis in range(rank):
        if roles[axis] == "other" and _SPATIAL_NAMES.search(names[axis]) and rank >= 3:
            roles[axis] = "image side"
        if roles[axis] == "other" and _SEQUENCE_NAMES.search(names[axis]):
            roles[axis] = "sequence"
    return roles


def _settled_symbols(specs: list[InputSpec], given: dict) -> dict[str, tuple[int, str]]:
    """Symbols whose value a given shape settles: {symbol: (value, where)}."""
    settled = {}
    for spec in specs:
        shape = given.get(spec.name)
        if shape is None:
            continue
        for dim, size in zip(spec.dims, shape):
            if _symbol(dim) and dim not in settled:
                settled[dim] = (int(size), f"the given shape of '{spec.name}'")
    return settled


def _shared_symbols_alike(specs, plans):
    """Inputs sharing a symbol get the first input's candidates for it, so their sizes agree."""
    first: dict[str, tuple] = {}
    for spec in specs:
        plan = plans[spec.name]
        for axis, dim in enumerate(spec.dims):
            if not _symbol(dim):
                continue
            if dim in first and plan[axis][2] is not None:  # only a default yields to the first input
                values, reason, role = first[dim][0]
                plan[axis] = (values, f"'{dim}' as in '{first[dim][1]}'", role)
            elif dim not in first:
                first[dim] = (plan[axis], spec.name)
    return plans


def _at_attempt(name: str, plan, attempt: int) -> ChosenShape:
    shape, reasons, roles = [], [], []
    for values, reason, role in plan:
        value = values[min(attempt, len(values) - 1)]
        shape.append(value)
        reasons.append(f"{reason} → {value}" if role is not None else reason)
        roles.append(role)
    return ChosenShape(name, tuple(shape), tuple(reasons), tuple(roles))


def _noting(shape: ChosenShape, note: str) -> ChosenShape:
    if not shape.chosen:
        return shape
    reasons = tuple(f"{reason} ({note})" if role is not None else reason for reason, role in zip(shape.reasons, shape.roles))
    return dataclasses.replace(shape, reasons=reasons)


def _runs_in_onnxruntime(model, feeds, cache) -> str | None:
    from graphopt.errors import first_line
    from graphopt.verify.feeds import split_samples
    from graphopt.verify.runner import SessionError, make_session, run_samples

    try:
        if "session" not in cache:
            cache["session"] = make_session(cache.get("serialised") or model)
        cache["outputs"], cache["feeds"] = None, None
        cache["outputs"], cache["feeds"] = run_samples(cache["session"], split_samples(feeds)), feeds
    except SessionError as error:
        cache.pop("session", None)
        return first_line(error)
    except Exception as error:  # onnxruntime raises its own types when a model fails on its inputs
        return first_line(error)
    return None
