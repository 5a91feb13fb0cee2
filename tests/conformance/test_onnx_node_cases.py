"""`cleanup` keeps every ONNX backend conformance case valid and numerically right.

For each case onnxruntime runs correctly as given (see `conformance_support.not_runnable_reason`),
cleanup must either produce a model that passes the full ONNX checker and reproduces the
expected outputs (rtol 1e-3, atol 1e-5), or refuse with a `graphopt.GraphoptError` that carries
a message. Anything else fails. A case onnxruntime cannot run as given has no reference: there
cleanup must still either refuse with a message or emit a model that keeps the interface and
passes the full checker (when the original does).

Default run: a fixed sample (every 8th case in name order). `-m slow`: every case.
`python tests/conformance/tally.py` prints the counts for all cases.
"""

import pytest

import conformance_support as support

SAMPLE_EVERY = 8


def _check(name: str, cases: dict) -> None:
    case = cases[name]
    if support.not_runnable_reason(case) is not None:
        # No reference to compare with, but no crash is acceptable either.
        assert support.check_case_without_reference(case) in (support.OK, support.REFUSED)
        return
    outcome, detail = support.check_case(case)
    assert outcome in (support.OK, support.REFUSED), outcome
    if outcome == support.REFUSED:
        assert detail.strip()


NODE_NAMES = list(support.node_cases())
FOLDER_NAMES = list(support.folder_cases())


@pytest.mark.parametrize("name", support.sample(NODE_NAMES, SAMPLE_EVERY))
def test_node_case(name):
    _check(name, support.node_cases())


@pytest.mark.parametrize("name", support.sample(FOLDER_NAMES, SAMPLE_EVERY // 2))
def test_data_folder_case(name):
    """Loaded by path, so graphopt's file loading (and external-data confinement) is exercised."""
    _check(name, support.folder_cases())


@pytest.mark.slow
@pytest.mark.parametrize("name", NODE_NAMES)
def test_node_case_all(name):
    _check(name, support.node_cases())


@pytest.mark.slow
@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_data_folder_case_all(name):
    _check(name, support.folder_cases())


def test_sample_is_fixed_and_large_enough():
    sample = support.sample(NODE_NAMES, SAMPLE_EVERY)
    assert sample == sorted(sample) == support.sample(reversed(NODE_NAMES), SAMPLE_EVERY)
    assert len(sample) >= 200, "the ONNX package ships fewer node cases than expected"
    assert len(FOLDER_NAMES) >= 100


def test_comparison_catches_a_wrong_value():
    """The harness itself: a value off by more than the tolerance, a dtype or a shape change fail."""
    import numpy as np

    support.assert_outputs_match([np.float32([1.0, 2.0])], [np.float32([1.0, 2.0005])])
    for wrong in (np.float32([1.0, 2.01]), np.float64([1.0, 2.0]), np.float32([1.0])):
        with pytest.raises(AssertionError):
            support.assert_outputs_match([np.float32([1.0, 2.0])], [wrong])
    with pytest.raises(AssertionError):
        support.assert_outputs_match([np.int64([3])], [np.int64([4])])
    support.assert_outputs_match([[np.int64([3]), np.float32([1])]], [[np.int64([3]), np.float32([1])]])
