"""Shared by the conformance tests and `tally.py`: the ONNX backend cases, "runs as given", comparison.

A case is one model with reference inputs and expected outputs: a node case of
`onnx.backend.test.case.node.collect_testcases()`, or a folder of the onnx package's
`backend/test/data/{pytorch-converted,pytorch-operator,simple}` (`model.onnx` plus
`test_data_set_*/{input,output}_*.pb`). Only a case onnxruntime itself runs correctly "as given"
says anything about graphopt; the others are "not runnable" and excluded, but counted.

For a runnable case, `check_case` runs `cleanup` and either
- returns `(OK, "")` (the result passes the full ONNX checker and ORT reproduces the expected outputs),
- returns `(REFUSED, message)` (graphopt raised a `GraphoptError` with a message: an acceptable "no"),
- or raises `AssertionError` / whatever graphopt raised that is not a `GraphoptError`: a failure.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import graphopt

__all__ = [
    "RTOL",
    "ATOL",
    "OK",
    "REFUSED",
    "Case",
    "node_cases",
    "folder_cases",
    "all_cases",
    "sample",
    "not_runnable_reason",
    "check_case",
    "assert_outputs_match",
]

# The tolerance every comparison here uses: ORT's own outputs against the expected ones (is the
# case runnable?) and graphopt's model against the expected ones (did cleanup keep the values?).
RTOL = 1e-3
ATOL = 1e-5

OK = "ok"
REFUSED = "refused"

DATA_FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")
_DATA_ROOT = Path(onnx.__file__).parent / "backend" / "test" / "data"


@dataclasses.dataclass(frozen=True)
class Case:
    """One conformance case; `source` is what graphopt is given (a ModelProto, or a path to load)."""

    name: str
    source: onnx.ModelProto | Path
    data_sets: Callable[[], list[tuple[list[Any], list[Any]]]]  # [(inputs, expected outputs)] in graph order

    @functools.cached_property
    def model(self) -> onnx.ModelProto:
        if isinstance(self.source, onnx.ModelProto):
            return self.source
        return onnx.load_model(str(self.source))


@functools.cache
def node_cases() -> dict[str, Case]:
    """The node cases by name (collecting them takes seconds: the expected outputs are computed)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference implementations overflow on purpose
        collected = collect_testcases()
    cases = {}
    for test_case in collected:
        data_sets = [(list(inputs), list(outputs)) for inputs, outputs in test_case.data_sets]
        cases[test_case.name] = Case(test_case.name, test_case.model, lambda data_sets=data_sets: data_sets)
    return dict(sorted(cases.items()))


@functools.cache
def folder_cases() -> dict[str, Case]:
    """The model folders shipped in the onnx package, by `<folder>/<case>`; loaded lazily."""
    cases = {}
    for folder in DATA_FOLDERS:
        for model_path in sorted((_DATA_ROOT / folder).glob("*/model.onnx")):
            name = f"{folder}/{model_path.parent.name}"
            cases[name] = Case(name, model_path, functools.cache(functools.partial(_load_data_sets, model_path)))
    return dict(sorted(cases.items()))


def all_cases() -> dict[str, Case]:
    return {**node_cases(), **folder_cases()}


def sample(names, every: int) -> list[str]:
    """A fixed, deterministic sample: every `every`-th name in sorted order."""
    return sorted(names)[::every]


def _load_data_sets(model_path: Path) -> list[tuple[list[Any], list[Any]]]:
    model = onnx.load_model(str(model_path), load_external_data=False)
    initializers = {tensor.name for tensor in model.graph.initializer}
    input_types = [value.type for value in model.graph.input if value.name not in initializers]
    output_types = [value.type for value in model.graph.output]
    data_sets = []
    for folder in sorted(model_path.parent.glob("test_data_set_*")):
        inputs = [_load_proto(folder / f"input_{i}.pb", t) for i, t in enumerate(input_types)]
        outputs = [_load_proto(folder / f"output_{i}.pb", t) for i, t in enumerate(output_types)]
        data_sets.append((inputs, outputs))
    return data_sets


def _load_proto(path: Path, type_proto: onnx.TypeProto) -> Any:
    content = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(content)
        return numpy_helper.to_list(sequence)
    if type_proto.HasField("optional_type"):
        optional = onnx.OptionalProto()
        optional.ParseFromString(content)
        return numpy_helper.to_optional(optional)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(content)
    return tensor


def _normalize(value: Any) -> Any:
    """TensorProto -> ndarray, numpy scalar -> 0-d array; lists (sequences) and None as they are."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        return [_normalize(item) for item in value]
    if value is None or isinstance(value, np.ndarray):
        return value
    return np.asarray(value)


def _feeds(model: onnx.ModelProto, inputs: list[Any]) -> dict[str, Any]:
    initializers = {tensor.name for tensor in model.graph.initializer}
    names = [value.name for value in model.graph.input if value.name not in initializers]
    if len(inputs) > len(names):
        raise ValueError(f"{len(inputs)} inputs given for {len(names)} graph inputs")
    # A None input is an omitted optional one: it is simply not fed.
    return {name: value for name, value in zip(names, inputs) if value is not None}


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, output_names: list[str], feeds: dict[str, Any]) -> list[Any]:
    return session.run(output_names, feeds)


def assert_outputs_match(expected: list[Any], actual: list[Any], *, what: str = "output") -> None:
    """Expected against actual outputs at RTOL/ATOL; non-float values must be exactly equal.

    Sequences compare item by item; an optional output that is absent must be absent in both.
    Raises AssertionError naming the output; TypeError for a value that cannot be compared.
    """
    assert len(actual) == len(expected), f"{len(actual)} {what}s, expected {len(expected)}"
    for index, (want, got) in enumerate(zip(expected, actual)):
        _assert_value_matches(want, got, f"{what} {index}")


def _assert_value_matches(want: Any, got: Any, where: str) -> None:
    want, got = _normalize(want), _normalize(got)
    if want is None or got is None:
        assert want is None and got is None, f"{where}: expected {type(want).__name__}, got {type(got).__name__}"
        return
    if isinstance(want, list) or isinstance(got, list):
        assert isinstance(want, list) and isinstance(got, list), f"{where}: a sequence against a tensor"
        assert len(got) == len(want), f"{where}: sequence of {len(got)} items, expected {len(want)}"
        for item, (w, g) in enumerate(zip(want, got)):
            _assert_value_matches(w, g, f"{where}[{item}]")
        return
    if not isinstance(want, np.ndarray) or not isinstance(got, np.ndarray):
        raise TypeError(f"{where}: cannot compare {type(want).__name__} with {type(got).__name__}")
    assert got.shape == want.shape, f"{where}: shape {got.shape}, expected {want.shape}"
    if want.dtype == object or got.dtype == object:  # strings
        np.testing.assert_array_equal(got.astype(object), want.astype(object), err_msg=where)
        return
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype}, expected {want.dtype}"
    if _is_float(want.dtype):
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=RTOL, atol=ATOL, err_msg=where)
    else:
        np.testing.assert_array_equal(got, want, err_msg=where)


def _is_float(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 / float8 types are not np.floating subclasses; their names say it.
    return np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating) or "float" in dtype.name


def not_runnable_reason(case: Case) -> str | None:
    """None if ORT (no graph optimizations) reproduces the expected outputs of every data set.

    Otherwise why not: ORT cannot load or run the model as given, or gets other values, or
    the outputs are of a type this harness does not compare, or the model as given fails
    `onnx.checker.check_model(full_check=True)` (the result is held to that check, which
    graphopt cannot be asked to pass for a model the ONNX checker already rejects).
    """
    try:
        data_sets = case.data_sets()
    except Exception as error:  # noqa: BLE001 - any unreadable data makes the case not runnable
        return f"data cannot be read: {_first_line(error)}"
    if not data_sets:
        return "no data sets"
    try:
        session = _session(case.source)
    except Exception as error:  # noqa: BLE001 - ORT raises types without a common base
        return f"ORT cannot load it: {_first_line(error)}"
    output_names = [value.name for value in case.model.graph.output]
    for inputs, expected in data_sets:
        try:
            actual = _run(session, output_names, _feeds(case.model, [_normalize(x) for x in inputs]))
        except Exception as error:  # noqa: BLE001
            return f"ORT cannot run it: {_first_line(error)}"
        try:
            assert_outputs_match(expected, actual)
        except TypeError as error:
            return f"outputs not comparable: {_first_line(error)}"
        except AssertionError as error:
            return f"ORT's own outputs differ from the expected ones: {_first_line(error)}"
    try:
        onnx.checker.check_model(case.model if isinstance(case.source, onnx.ModelProto) else str(case.source), full_check=True)
    except Exception as error:  # noqa: BLE001 - ValidationError or InferenceError
        return f"the model as given fails the full ONNX check: {_first_line(error)}"
    return None


def check_case(case: Case) -> tuple[str, str]:
    """Runs cleanup over a runnable case: (OK, "") or (REFUSED, message); raises on a failure (see module doc)."""
    try:
        result = graphopt.optimize(case.source, passes=["cleanup"], verify="off")
    except graphopt.GraphoptError as error:
        assert str(error).strip(), f"graphopt refused {case.name} with an empty message ({type(error).__name__})"
        assert isinstance(error.exit_code, int) and error.exit_code > 0
        return REFUSED, f"{type(error).__name__}: {_first_line(error)}"
    optimized = result.model
    assert isinstance(optimized, onnx.ModelProto)
    onnx.checker.check_model(optimized, full_check=True)
    again = graphopt.optimize(optimized, passes=["cleanup"], verify="off").report["passes"][0]
    assert not again["changed"], f"cleanup is not idempotent on {case.name}: a second run did {again['details']}"
    assert [v.name for v in optimized.graph.output] == [v.name for v in case.model.graph.output]
    session = _session(optimized)
    output_names = [value.name for value in case.model.graph.output]
    for inputs, expected in case.data_sets():
        # Fed by the original input names: cleanup must keep the interface.
        actual = _run(session, output_names, _feeds(case.model, [_normalize(x) for x in inputs]))
        assert_outputs_match(expected, actual, what="cleaned-up model's output")
    return OK, ""


def check_case_without_reference(case: Case) -> str:
    """For a case onnxruntime cannot run as given: graphopt must still not crash.

    Either cleanup refuses with a GraphoptError carrying a message, or its model keeps the
    interface and passes the full checker whenever the original did. Returns the outcome.
    """
    try:
        result = graphopt.optimize(case.source, passes=["cleanup"], verify="off")
    except graphopt.GraphoptError as error:
        assert str(error).strip(), f"graphopt refused {case.name} with an empty message ({type(error).__name__})"
        return REFUSED
    assert [v.name for v in result.model.graph.output] == [v.name for v in case.model.graph.output]
    try:
        onnx.checker.check_model(case.model, full_check=True)
    except Exception:  # noqa: BLE001 - the original is itself invalid; nothing more to hold it to
        return OK
    onnx.checker.check_model(result.model, full_check=True)
    return OK


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.splitlines()[0].split())[:300]

