"""graphopt/verify/evaluator.py: the user's score as a budget."""

from __future__ import annotations

import pytest

from graphopt.errors import UsageError
from graphopt.verify import Budget
from graphopt.verify.evaluator import ScoreBudget, judge_score, load_evaluator


def test_score_budgets_parse():
    assert Budget.parse("score=-1%").score_budget() == ScoreBudget(drop=0.01)
    assert Budget.parse("cos=0.99,score>=0.75").score_budget() == ScoreBudget(minimum=0.75)
    assert Budget.parse("cos=0.99").score_budget() is None
    assert Budget.parse("cos=0.99,score=-1%").describe() == "cos=0.99,score=-1%"
    with pytest.raises(UsageError, match="score=-P%"):
        Budget.parse("score=0.5")


def test_a_relative_drop_and_a_floor_are_judged():
    assert judge_score(0.8, 0.795, ScoreBudget(drop=0.01))[1] is None
    entry, failure = judge_score(0.8, 0.78, ScoreBudget(drop=0.01))
    assert failure and "2.5%" in failure and not entry["ok"]
    assert judge_score(0.8, 0.74, ScoreBudget(minimum=0.75))[1]


def test_an_evaluator_spec_names_module_and_function():
    assert load_evaluator("json:dumps").__name__ == "dumps"
    with pytest.raises(UsageError, match="package.module:function"):
        load_evaluator("json.dumps")
    with pytest.raises(UsageError, match="cannot be imported"):
        load_evaluator("no_such_module_here:f")
    with pytest.raises(UsageError, match="no function"):
        load_evaluator("json:nothing")
