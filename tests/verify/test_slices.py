"""Budgets per slice of an output: declared (--budget-slices) or detected for Concat-built detector heads."""

from __future__ import annotations

import numpy as np
import pytest

import trait_models
from graphopt.errors import UsageError
from graphopt.verify import Budget, Verifier
from graphopt.verify.slices import OutputSlice, detect_slices, output_slices, parse_slices


def test_parse_declared_slices():
    assert parse_slices(["output0@1=0:4,4:"]) == (OutputSlice("output0", 1, 0, 4), OutputSlice("output0", 1, 4, None))
    assert parse_slices("y=:2") == (OutputSlice("y", -1, None, 2),)
    with pytest.raises(UsageError, match="START:STOP"):
        parse_slices(["y=0-4"])
    with pytest.raises(UsageError, match="NAME"):
        parse_slices(["y"])


def test_a_yolo_head_is_sliced_into_boxes_and_scores():
    model = trait_models.yolo_like()  # output0 (batch, 4 + classes, anchors): Concat of xy, wh, scores
    found = detect_slices(model, {"images": (1, 3, 64, 64)})
    classes = trait_models.YOLO_CLASSES
    assert found == (OutputSlice("output0", -2, 0, 2), OutputSlice("output0", -2, 2, 4),
                     OutputSlice("output0", -2, 4, 4 + classes))
    # declared slices of an output replace the detected ones; an unknown output is a usage error
    assert output_slices(model, ["output0@1=0:4,4:"], {"images": np.zeros((1, 1, 3, 64, 64))}) == parse_slices(["output0@1=0:4,4:"])
    with pytest.raises(UsageError, match="not an output"):
        output_slices(model, ["boxes=0:4"], None)


def _boxes_and_scores(score_noise: float):
    """(4 + 3, 50) outputs: boxes in pixels (hundreds), scores in 0-1; the candidate's scores noisy."""
    rng = np.random.default_rng(0)
    references, candidates = [], []
    for _ in range(3):
        boxes, scores = rng.uniform(100, 600, (4, 50)), rng.uniform(0, 1, (3, 50))
        references.append({"output0": np.concatenate([boxes, scores]).astype(np.float32)})
        noisy = np.clip(scores + rng.normal(0, score_noise, scores.shape), 0, 1)
        candidates.append({"output0": np.concatenate([boxes, noisy]).astype(np.float32)})
    return references, candidates


def test_a_whole_output_cosine_that_hides_the_scores_fails_on_the_score_slice():
    references, candidates = _boxes_and_scores(0.5)
    whole = Verifier([]).judge(references, candidates, budget=Budget(cos=0.99))
    assert whole.ok and whole.outputs["output0"]["cosine"] > 0.99  # the boxes drown the scores
    sliced = Verifier([], parse_slices(["output0@0=0:4,4:"])).judge(references, candidates, budget=Budget(cos=0.99))
    assert not sliced.ok
    scores = sliced.outputs["output0@0[4:]"]
    assert scores["slice_of"] == "output0" and scores["cosine"] < 0.95 and not scores["within"]
    assert sliced.outputs["output0@0[0:4]"]["within"]
    assert any("output0@0[4:]" in failure for failure in sliced.failures)
