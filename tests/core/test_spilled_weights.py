"""graphopt.external_data's spill file: weights a pass creates in a model whose weights stay on
disk go to a scratch file, not into the ModelProto that every export, check and session copies."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

import graphopt
from graphopt import convert, tensor_shapes
from graphopt.external_data import external_file, external_folder, spill_folder
from graphopt.model import Model, RunContext, to_proto
from graphopt.hookspecs import hookimpl
from graphopt.model import check_model, infer_model_shapes
from graphopt.model_io import load_model, save_model
from graphopt.verify.runner import make_session, run_samples
from test_model_io import HIDDEN, assert_close, folded_mlp_model, run_ort, save_split_all


def spilled_tensors(model: onnx.ModelProto, spill) -> list[onnx.TensorProto]:
    """The main graph's initializers that live in the spill folder `spill`."""
    return [t for t in model.graph.initializer
            if external_data_helper.uses_external_data(t) and external_file(t).parent == spill]


@pytest.fixture
def feeds():
    return {"x": np.random.default_rng(1).standard_normal((1, HIDDEN)).astype(np.float32)}


def test_a_folded_weight_is_spilled_and_every_consumer_reads_it(tmp_path, feeds):
    from graphopt_plugins.cleanup import Cleanup

    source = save_split_all(folded_mlp_model(), tmp_path / "in")
    expected = run_ort(source, feeds)
    model = infer_model_shapes(load_model(source))
    with spill_folder(model) as folder:
        assert folder is not None and folder.is_dir()
        running = Model.imported(model, RunContext(weights_dir=external_folder(model), spill_dir=folder))
        assert Cleanup().run(running.graph, graphopt.PassContext(opset=17, model=model)).stats["constants_folded"] == 1
        candidate = infer_model_shapes(to_proto(running, "refs"))
        spilled = spilled_tensors(candidate, folder)
        assert len(spilled) == 1 and Path(external_data_helper.ExternalDataInfo(spilled[0]).location).parent == folder
        assert candidate.ByteSize() < 16384, "the folded 512x256 weight must not be in the proto"
        check_model(candidate, full=True)
        verifying, optimized = make_session(candidate), make_session(candidate, optimize=True)
        assert [value.name for value in verifying.get_inputs()] == ["x"]
        assert_close(expected, list(run_samples(verifying, [feeds])[0].values()))
        assert_close(expected, list(run_samples(optimized, [feeds])[0].values()))
        # a second pass maps the spilled weight back, and exports it as the same reference
        again = to_proto(Model.imported(candidate, running.context), "refs")
        assert [t.SerializeToString() for t in spilled_tensors(again, folder)] == [t.SerializeToString() for t in spilled]
        out = tmp_path / "out"
        out.mkdir()
        save_model(candidate, out / "model.onnx", source=source)
    assert not folder.exists(), "the spill folder lives as long as the block"
    written = onnx.load(str(out / "model.onnx"), load_external_data=False)
    locations = {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert_close(expected, run_ort(out / "model.onnx", feeds))


class _SpillsAfterPasses:
    """Notes, as each pass ends, where the model's weights outside the input's folder are (the spill folder)."""

    def __init__(self, input_folder):
        self.input_folder, self.seen = input_folder, []

    @hookimpl
    def graphopt_after_pass(self, model):
        spilled = [t for t in model.graph.initializer if external_data_helper.uses_external_data(t)
                   and Path(external_data_helper.ExternalDataInfo(t).location).parent != self.input_folder]
        folder = Path(external_data_helper.ExternalDataInfo(spilled[0]).location).parent if spilled else None
        self.seen.append((folder, len(spilled), model.ByteSize()))


def test_optimize_spills_while_it_runs_and_returns_a_model_without_spill_references(tmp_path, feeds):
    source = save_split_all(folded_mlp_model(), tmp_path / "in")
    spy = _SpillsAfterPasses(source.parent.resolve())
    result = graphopt.optimize(str(source), passes=["cleanup"], plugins=[spy])
    [(folder, spilled, size)] = spy.seen
    assert spilled == 1 and size < 16384 and folder.name.startswith("graphopt-spill-")
    assert not folder.exists()
    assert not any(entry.key.startswith("graphopt") for entry in result.model.metadata_props)
    assert not any(external_data_helper.uses_external_data(t) for t in result.model.graph.initializer)
    assert_close(run_ort(source, feeds), run_ort(result.model, feeds))


def test_a_model_held_in_memory_never_spills(feeds):
    model = folded_mlp_model()
    before = set(Path(tempfile.gettempdir()).glob("graphopt-spill-*"))
    with spill_folder(model) as folder:
        assert folder is None
    result = graphopt.optimize(model, passes=["cleanup"])
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds))
    assert not any(entry.key.startswith("graphopt") for entry in result.model.metadata_props)
    assert set(Path(tempfile.gettempdir()).glob("graphopt-spill-*")) == before


def test_optimize_to_file_streams_spilled_and_untouched_weights_into_the_output(tmp_path, feeds):
    source = save_split_all(folded_mlp_model(), tmp_path / "in")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    report = graphopt.optimize_to_file(str(source), out, passes=["cleanup"], external_data=True)
    assert report["passes"][0]["details"]["constants_folded"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    assert_close(run_ort(source, feeds), run_ort(out, feeds))
    # without external_data, a result that fits is written in one piece
    report = graphopt.optimize_to_file(str(source), tmp_path / "one.onnx", passes=["cleanup"])
    assert not (tmp_path / "one.onnx.data").exists()
    assert_close(run_ort(source, feeds), run_ort(tmp_path / "one.onnx", feeds))


def test_refreshing_shapes_leaves_mapped_weights_on_disk(tmp_path):
    source = save_split_all(folded_mlp_model(), tmp_path / "in")
    model = infer_model_shapes(load_model(source))
    graph = convert.import_graph(model)
    weight = graph.tensors()["w1"]
    mapped = weight.values
    assert isinstance(mapped, np.memmap)
    tensor_shapes.refresh_shapes(graph)
    # exported as its file reference, so the constant holds the reference again, not a copy
    assert type(weight._values).__name__ == "_MappedValues"
    np.testing.assert_array_equal(weight.values, mapped)
