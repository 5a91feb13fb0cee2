"""graphopt_plugins/quantize/accuracy.py: the search that keeps the most harmful layers float."""

from graphopt_plugins.quantize.accuracy import fit_to_budget


def _search(needed: int, at_least: int = 0):
    candidates = list(range(20))
    seen = []

    def evaluate(subset):
        seen.append(len(candidates) - len(subset))
        ok = len(candidates) - len(subset) >= needed
        return {"cosine": 1.0 if ok else 0.5, "sqnr_db": 0.0, "ok": ok, "violations": []}

    quantized, metrics, sensitivity, tried = fit_to_budget(evaluate, candidates, lambda units: {i: float(i) for i in units}, at_least=at_least)
    return quantized, metrics, tried, seen


def test_the_fewest_float_layers_that_meet_the_budget_and_the_most_harmful_first():
    quantized, metrics, tried, seen = _search(needed=5)
    assert metrics["ok"] and quantized == list(range(5, 20))  # the lowest-SQNR five stay float
    assert tried == len(seen)


def test_a_known_lower_bound_skips_the_plans_below_it():
    quantized, metrics, tried, seen = _search(needed=7, at_least=6)
    assert quantized == list(range(7, 20))
    assert min(seen) >= 6 and 0 not in seen and tried <= 3


def test_nothing_meets_the_budget():
    quantized, metrics, tried, seen = _search(needed=21)
    assert quantized == [] and metrics["ok"]
