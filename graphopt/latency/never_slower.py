"""Never slower: after the passes, the output is timed against the input, and stages that made
it slower beyond measured noise are rolled back, last first.

The timing is a callable, so any latency backend plugs in: `compare(models, feeds)` takes
`{label: model}` and one sample, times the models interleaved, and returns `{label: {"ratio":
median / the first model's median, "median_ms": …}}` (the shape of `bench.compare_latency` and
of a `LatencyBackend.compare`). Noise is measured, not assumed: when the output looks slower,
the input is timed against itself in the same rounds, and a difference within what the input
shows against its own copy (or within `margin`) is not a slowdown.

Rolling back keeps the output of the longest run of stages that is not slower: a stage's
output is the input of the next, so a stage in the middle cannot go without those after it.
Stages are rolled back last first, down to the last lossy stage that is not `strict`: such a
pass (quantize, fp16) made its own latency decision (`quantize.latency`), which the user may
have set on purpose, and its trade of accuracy for size is not undone here. So the stages after
it are timed against that lossy stage's output, not the input: `fp16,compact` keeps `compact`
even though float16 itself is slower than the input on an x86 host (the slowdown is fp16's,
which is not rolled back).

A `strict` stage is a lossy pass that holds itself to never slower (`Pass.trades_for_speed`:
channel prune and factorize with their `never_slower` option on). It traded accuracy for
speed, so a result that contains it is kept only when its median ratio to the baseline (the
input, or that lossy stage's output) is at most 1.0 — no noise allowance, no timer floor: a
result that is not faster is not worth the accuracy it cost. The pass checked itself against
*its* input (`speed.py`); this checks the whole result, which also catches a lossless stage
before it that cost more than the lossy one gained.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import onnx

__all__ = ["Stage", "NeverSlower", "keep_never_slower", "check_on", "host_compare", "check_pipeline_result", "holds_to_never_slower", "DEFAULT_MARGIN",
           "plainly_apart"]

logger = logging.getLogger(__name__)

Compare = Callable[[Mapping[str, onnx.ModelProto], dict], Mapping[str, Mapping[str, Any]]]

DEFAULT_MARGIN = 0.02  # a slowdown under 2% is not acted on, whatever the noise
# Nor one under 20 µs a run: below what a shared machine's timer resolves from run to run, and
# what a model that small could lose anyway.
MIN_MS = 0.02
# The first comparison of input and output on a backend (`check_on`): its time split into this
# many interleaved rounds, ended after two when the medians are `PLAIN` apart (a fused PP-OCR
# model times 0.7-0.85x its input: the verdict is plain long before the last round).
QUICK_ROUNDS = 8
PLAIN = 0.10


@dataclasses.dataclass
class Stage:
    """One accepted pass: its name, the model it produced, whether it is lossless, that model's
    stored size, its report entry, and whether it is a lossy pass held to never slower (`strict`)."""

    name: str
    model: onnx.ModelProto
    lossless: bool = True
    size: int | None = None
    entry: dict | None = None
    strict: bool = False


@dataclasses.dataclass
class NeverSlower:
    """What the check kept: the first `kept` stages (0: the input itself), and what it measured."""

    kept: int
    report: dict
    baseline: str = "the input"  # what the rolled-back stages were slower than, in words


def holds_to_never_slower(pass_) -> bool:
    """Whether a pass's result is a `strict` stage: a lossy pass that trades accuracy for speed
    (`Pass.trades_for_speed`: prune with channels, factorize, with `never_slower` on)."""
    return not pass_.lossless and pass_.trades_for_speed()


def check_on(backend) -> Compare | None:
    """The check's timing on a `graphopt.latency` backend; None (no check) for one that times nothing."""
    if not getattr(backend, "measures", True):
        return None

    def compare(models: Mapping[str, onnx.ModelProto], feeds: dict) -> Mapping[str, Mapping[str, Any]]:
        if len(models) != 2:  # the noise measurement beside the input's copy: every round
            return backend.compare(models, feeds, purpose="never slower")
        return backend.compare(models, feeds, purpose="never slower", rounds=QUICK_ROUNDS, decided=plainly_apart)
    return compare


def plainly_apart(medians: list[float]) -> bool:
    """Whether the second model's median is `PLAIN` or more from the first's, either way: a
    verdict no further round would turn (one that looks slower is timed again beside the
    input's copy anyway, `_judge`)."""
    return bool(medians[0]) and medians[1] is not None and abs(medians[1] / medians[0] - 1.0) >= PLAIN


def host_compare(models: Mapping[str, onnx.ModelProto], feeds: dict) -> dict[str, dict]:
    """onnxruntime on this machine, 1 thread, interleaved medians (`bench.compare_latency`): the
    pipeline's default when no backend is given (`check_on` is what the API uses)."""
    from graphopt.bench import compare_latency

    return compare_latency(models, feeds, threads=1, runs=20, warmup=2)


def keep_never_slower(original: onnx.ModelProto, stages: list[Stage], compare: Compare, feeds: dict, *,
                      margin: float = DEFAULT_MARGIN, repeats: int = 3) -> NeverSlower:
    """How many of `stages` to keep so that the result is not slower than `original`, or than
    the last lossy, not `strict` stage's output when there is one (the stages after it are
    judged against what they started from); a result with a `strict` stage after that
    baseline is held to no slower at all.

    Times the last stage's output against that baseline; while it is slower beyond noise and the
    last stage is lossless, drops it and times the one before. Every timing taken is in the report.
    """
    timings = []
    # the last lossy stage whose own latency decision stands: the stages after it started from its output
    anchor = next((index for index in range(len(stages) - 1, -1, -1) if not stages[index].lossless and not stages[index].strict), -1)
    lossy = stages[anchor] if anchor >= 0 else None
    baseline = original if lossy is None else lossy.model
    for kept in range(len(stages), 0, -1):
        last = stages[kept - 1]
        if not last.lossless and not last.strict:
            break
        strict = any(stage.strict for stage in stages[anchor + 1:kept])
        verdict = _judge(baseline, last.model, compare, feeds, margin, repeats, strict)
        timings.append({"after": last.name, "against": "input" if lossy is None else lossy.name, **verdict})
        if not verdict["slower"]:
            break
        if strict:
            logger.warning("the model after pass '%s' timed %.3fx %s (median of %d timings; a lossy pass must be "
                           "faster); rolled back", last.name, verdict["ratio"], _baseline_words(lossy), verdict["timings"])
        else:
            logger.warning("the model after pass '%s' is slower than %s (%.3fx, noise ±%.3f); rolled back",
                           last.name, _baseline_words(lossy), verdict["ratio"], verdict["noise"])
    else:
        kept = 0
    rolled_back = [stage.name for stage in stages[kept:]]
    report = {"checked": True, "margin": margin, "timings": timings, "rolled_back": rolled_back}
    if not timings:
        report.update(checked=False, reason=f"the last pass, '{stages[-1].name}', is lossy: its own latency decision stands")
    return NeverSlower(kept, report, _baseline_words(lossy))


def _baseline_words(lossy: Stage | None) -> str:
    return "the input" if lossy is None else f"the output of the lossy pass '{lossy.name}'"


def _judge(original, candidate, compare: Compare, feeds: dict, margin: float, repeats: int, strict: bool = False) -> dict:
    """`{"slower", "ratio", "noise", "timings", "input_ms", "output_ms"}` for `candidate` against `original`.

    One quick comparison settles a result that is not slower; a result that looks slower is
    timed `repeats` times more beside a second copy of the input, whose ratio to the first
    is the noise of that moment. Lossless (`strict` false): slower beyond the margin or the
    noise, whichever is larger, and by at least `MIN_MS`. `strict`: the median ratio above 1.0.
    """
    quick = compare({"input": original, "output": candidate}, feeds)
    ratio = float(quick["output"]["ratio"])
    if ratio <= 1.0 or (not strict and (ratio <= 1.0 + margin or _gap_ms(quick) < MIN_MS)):
        return _verdict(False, ratio, 0.0, 1, quick)
    ratios, noise, last = [], 0.0, quick
    for _ in range(max(repeats, 1)):
        last = compare({"input": original, "input_again": original, "output": candidate}, feeds)
        ratios.append(float(last["output"]["ratio"]))
        noise = max(noise, abs(float(last["input_again"]["ratio"]) - 1.0))
    ratio = statistics.median(ratios)
    if strict:
        return _verdict(ratio > 1.0, ratio, noise, len(ratios), last)
    return _verdict(ratio > 1.0 + max(margin, noise) and _gap_ms(last) >= MIN_MS, ratio, noise, len(ratios), last)


def _gap_ms(timing: Mapping) -> float:
    """How much longer the output's median run is than the input's (inf when a backend gives no ms)."""
    output, input_ = timing["output"].get("median_ms"), timing["input"].get("median_ms")
    return float("inf") if output is None or input_ is None else output - input_


def _verdict(slower: bool, ratio: float, noise: float, timings: int, timing: Mapping) -> dict:
    return {"slower": slower, "ratio": round(ratio, 4), "noise": round(noise, 4), "timings": timings,
            "input_ms": timing["input"].get("median_ms"), "output_ms": timing["output"].get("median_ms")}


def check_pipeline_result(original: onnx.ModelProto, original_size: int | None, stages: list[Stage],
                          compare: Compare | None, feeds: dict | None) -> tuple[onnx.ModelProto, int | None, dict]:
    """The pipeline's side of the check: (the model to keep, its size, the report's `never_slower`).

    Marks the report entries of the stages it rolls back. `compare` None means the check is off.
    """
    if compare is None:
        return _last(original, original_size, stages) + ({"checked": False, "reason": "turned off"},)
    if not stages:
        return original, original_size, {"checked": False, "reason": "no pass changed the model"}
    if feeds is None:
        return _last(original, original_size, stages) + ({"checked": False, "reason": "no inputs to time it on (verification off)"},)
    outcome = keep_never_slower(original, stages, compare, feeds)
    timings = outcome.report.get("timings", [])
    for index, stage in enumerate(stages[outcome.kept:], outcome.kept):
        if stage.entry is None:
            continue
        because = f"slower than {outcome.baseline}"
        timing = timings[len(stages) - 1 - index] if len(stages) - 1 - index < len(timings) else None
        if stage.strict and timing is not None:  # a lossy pass's result, held to no slower at all
            because = (f"not faster than {outcome.baseline}: the model after it timed {timing['ratio']:.3f}x "
                       f"(median of {timing['timings']} interleaved timings)")
        stage.entry.update(status="rolled_back", rolled_back=True, rolled_back_because=because)
    return _last(original, original_size, stages[:outcome.kept]) + (outcome.report,)


def _last(original, original_size, stages: list[Stage]) -> tuple[onnx.ModelProto, int | None]:
    return (stages[-1].model, stages[-1].size) if stages else (original, original_size)
