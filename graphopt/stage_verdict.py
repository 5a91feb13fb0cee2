"""How one pass's result is judged: its budget, the verifier's verdict, the end-to-end budget
so far, the user's evaluator, and the back-off's record of each setting tried.

The pipeline (`graphopt.pipeline`) decides what to do with a verdict; this module only forms it.
"""

from __future__ import annotations

import dataclasses

import onnx

from graphopt.errors import PassError
from graphopt.jsonable import to_jsonable
from graphopt.passes import Pass, PassResult
from graphopt.verify import Budget, SessionError

__all__ = ["DEFAULT_LOSSY_BUDGET", "budget_for", "score_check", "judge_pass", "backoff_try", "options_of",
           "verify_stage", "outputs_or_fail", "failure_message"]

# What a lossy pass is held to when neither it nor the user set a budget.
DEFAULT_LOSSY_BUDGET = Budget(cos=0.99)


def budget_for(pass_: Pass, settings) -> Budget | None:
    if pass_.lossless:
        return None
    own = Budget.parse(pass_.budget())
    if own is None:
        return settings.budget or DEFAULT_LOSSY_BUDGET
    return own


def score_check(settings, original: onnx.ModelProto, sample_inputs):
    """The user evaluator's check (`--evaluator`, `--budget score=...`), or None."""
    score_budget = settings.budget.score_budget() if settings.budget is not None else None
    if settings.evaluator is None or score_budget is None or sample_inputs is None:
        return None
    from graphopt.verify.evaluator import ScoreCheck

    return ScoreCheck(settings.evaluator, score_budget, sample_inputs, original)


def judge_pass(verifier, stage_outputs, reference_outputs, original, model, candidate, pass_, settings, score=None):
    """(verdict, its report entry, the candidate's outputs, the failure message) of one pass's result."""
    budget = budget_for(pass_, settings)
    verdict, candidate_outputs = verify_stage(verifier, stage_outputs, model, candidate, pass_, budget)
    report = verdict.to_dict()
    message = failure_message(pass_, verdict)
    if verdict.ok and not pass_.lossless:
        # The global budget is what the lossy passes keep *together*: a pass within its
        # own budget that takes the model as a whole outside it goes back, so with
        # --keep-going the passes that fit are kept and the end-to-end check holds.
        overall = settings.budget or DEFAULT_LOSSY_BUDGET
        so_far = verifier.judge(reference_outputs, candidate_outputs, budget=overall)
        report["end_to_end_so_far"] = so_far.to_dict()
        if not so_far.ok:
            so_far.first_divergence = verifier.localize(original, candidate, budget=overall)
            report.update(ok=False, end_to_end_so_far=so_far.to_dict())
            verdict = so_far
            message = (f"pass '{pass_.name}' would take the model outside the end-to-end budget "
                       f"({overall.describe()}): {so_far.summary()}")
    if verdict.ok and not pass_.lossless and score is not None:
        report["score"], failure = score.check(candidate)
        if failure:
            verdict = dataclasses.replace(verdict, ok=False, failures=[f"evaluator: {failure}"] + verdict.failures)
            report["ok"] = False
            message = f"pass '{pass_.name}' misses the evaluator's budget: {failure}"
    return verdict, report, candidate_outputs, message


def backoff_try(pass_: Pass, result: PassResult, verdict) -> dict:
    """One setting the back-off tried: its options, whether it changed the model, how it did."""
    entry = {"options": options_of(pass_), "changed": result.changed}
    if verdict is not None and result.changed:
        entry.update(ok=verdict.ok, failures=verdict.failures[:3],
                     worst_cosine={name: metrics.get("cosine") for name, metrics in verdict.outputs.items()})
    return to_jsonable(entry)


def options_of(pass_: Pass) -> dict:
    # Names from the dataclass: describe_options would parse the source for help text.
    return to_jsonable({field.name: getattr(pass_.options, field.name) for field in dataclasses.fields(pass_.options)})


def verify_stage(verifier, stage_outputs, model, candidate, pass_, budget):
    candidate_outputs = outputs_or_fail(verifier, candidate, f"the model pass '{pass_.name}' produced", pass_.name)
    verdict = verifier.judge(stage_outputs, candidate_outputs, budget=budget)
    if not verdict.ok:
        verdict.first_divergence = verifier.localize(model, candidate, budget=budget)
    return verdict, candidate_outputs


def outputs_or_fail(verifier, model, what, pass_name="verify"):
    try:
        return verifier.outputs(model)
    except SessionError as error:
        raise PassError(f"onnxruntime cannot run {what}: {error}", pass_name=pass_name) from error


def failure_message(pass_: Pass, verdict) -> str:
    message = f"pass '{pass_.name}' failed verification: {verdict.summary()}"
    where = verdict.first_divergence
    if where:
        message += f"; first divergence at node '{where['node']}' ({where['op']}, tensor '{where['tensor']}')"
    return message
