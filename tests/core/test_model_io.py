"""graphopt.model_io: external data confined to the model's folder, atomic writes, faithful round trips.

Tests mirror graphopt/model_io.py. Models are built in the test with onnx.helper; outputs are
compared in onnxruntime with the float32 lossless tolerance the verifier uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.errors import InputError, UsageError
from graphopt.external_data import external_folder
from graphopt.model_io import load_model, save_model
from graphopt.verify.runner import make_session, run_samples
from graphopt.verify import tolerance_for

F32 = tolerance_for(np.float32)
HIDDEN = 512  # three 512x512-ish float32 weights: about 2.5 MB of external data


def run_ort(model: onnx.ModelProto | Path, feeds: dict) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close(expected: list[np.ndarray], got: list[np.ndarray]) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b, a, rtol=F32.rtol, atol=F32.atol)


def mlp_model() -> onnx.ModelProto:
    """x [1, 512] → MatMul/Add/Relu ×2 → MatMul → y [1, 256], with export litter for cleanup (an Identity)."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b1": rng.standard_normal(HIDDEN).astype(np.float32),
        "w2": (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32),
        "w3": (rng.standard_normal((HIDDEN, 256)) / np.sqrt(HIDDEN)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="act1"),
        helper.make_node("Identity", ["a1"], ["a1_copy"], name="litter"),
        helper.make_node("MatMul", ["a1_copy", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="act2"),
        helper.make_node("MatMul", ["a2", "w3"], ["y"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def save_split(model: onnx.ModelProto, folder: Path) -> Path:
    """Saves `model` as folder/model.onnx with w1,b1 in part1.bin and w2,w3 in weights/part2.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights").mkdir()
    model = onnx.ModelProto.FromString(model.SerializeToString())
    files = {"w1": "part1.bin", "b1": "part1.bin", "w2": "weights/part2.bin", "w3": "weights/part2.bin"}
    offsets: dict[str, int] = {}
    for tensor in model.graph.initializer:
        location = files[tensor.name]
        data = tensor.raw_data
        offset = offsets.get(location, 0)
        with open(folder / location, "ab") as handle:
            handle.write(data)
        offsets[location] = offset + len(data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def feeds():
    return {"x": np.random.default_rng(1).standard_normal((1, HIDDEN)).astype(np.float32)}


# --- external data ------------------------------------------------------------------------


def test_split_external_data_loads_optimizes_and_writes_external(tmp_path, feeds):
    source = save_split(mlp_model(), tmp_path / "in")
    assert source.stat().st_size < 4096, "the weights must really live outside the .onnx"
    expected = run_ort(source, feeds)

    loaded = load_model(source)
    # Big weights stay in their files (read in place); the 2 KB bias is read in.
    external = {t.name for t in loaded.graph.initializer if onnx.external_data_helper.uses_external_data(t)}
    assert external == {"w1", "w2", "w3"}
    assert external_folder(loaded) == source.parent.resolve()  # by absolute path, not in metadata_props
    assert not loaded.metadata_props
    assert loaded.ByteSize() < 8192
    assert_close(expected, run_samples(make_session(loaded), [feeds])[0].values())

    out = tmp_path / "out"
    out.mkdir()
    code = main(["optimize", str(source), "-o", str(out / "mlp.onnx"), "--external-data", "--quiet"])
    assert code == 0
    assert sorted(os.listdir(out)) == ["mlp.onnx", "mlp.onnx.data"]
    assert (out / "mlp.onnx").stat().st_size < 4096
    assert (out / "mlp.onnx.data").stat().st_size >= 4 * (2 * HIDDEN * HIDDEN + HIDDEN * 256)
    onnx.checker.check_model(str(out / "mlp.onnx"), full_check=True)
    written = onnx.load(str(out / "mlp.onnx"), load_external_data=False)
    assert "Identity" not in {node.op_type for node in written.graph.node}
    locations = {
        entry.value for t in written.graph.initializer for entry in t.external_data if entry.key == "location"
    }
    assert locations == {"mlp.onnx.data"}
    assert_close(expected, run_ort(out / "mlp.onnx", feeds))
    # the input, and the files it reads, are untouched
    assert_close(expected, run_ort(source, feeds))


def folded_mlp_model() -> onnx.ModelProto:
    """mlp_model with w3 stored transposed behind a Transpose (cleanup folds it into a new weight)
    and w2 duplicated as w2_copy (cleanup merges the two)."""
    model = mlp_model()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    del model.graph.initializer[:]
    weights["w3t"] = np.ascontiguousarray(weights.pop("w3").T)
    weights["w2_copy"] = weights["w2"].copy()
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in weights.items())
    for node in model.graph.node:
        if node.name == "fc3":
            node.input[1] = "w3"
        if node.name == "act2":
            node.input[0] = "h2_sum"
    model.graph.node.insert(0, helper.make_node("Transpose", ["w3t"], ["w3"], name="unfold", perm=[1, 0]))
    model.graph.node.insert(5, helper.make_node("MatMul", ["a1_copy", "w2_copy"], ["h2_again"], name="fc2_again"))
    model.graph.node.insert(7, helper.make_node("Add", ["h2", "h2_again"], ["h2_sum"], name="fc2_sum"))
    return model


def save_split_all(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    return folder / "model.onnx"


def test_pipeline_keeps_untouched_weights_in_their_files_and_save_streams_them(tmp_path, feeds):
    from graphopt import convert
    from graphopt.model import check_model, infer_model_shapes
    from graphopt_plugins.cleanup import Cleanup

    source = save_split_all(folded_mlp_model(), tmp_path / "in")
    assert len(os.listdir(tmp_path / "in")) == 6, "one file per weight (5) and the model"
    expected = run_ort(source, feeds)
    model = infer_model_shapes(load_model(source))
    graph = convert.import_graph(model)
    result = Cleanup().run(graph, graphopt.PassContext(opset=17, model=model))
    assert result.stats["constants_folded"] == 1 and result.stats["initializers_deduped"] == 1
    candidate = infer_model_shapes(convert.export_model(graph, model))
    check_model(candidate, full=True)
    by_name = {t.name: t for t in candidate.graph.initializer}
    # dedupe read every weight (memory-mapped); the untouched ones are still references
    assert {n for n, t in by_name.items() if onnx.external_data_helper.uses_external_data(t)} == {"w1", "w2_copy"}
    folded = next(t for n, t in by_name.items() if n not in ("w1", "w2_copy", "b1"))
    assert len(folded.raw_data) == HIDDEN * 256 * 4  # the folded transpose: new values, in memory
    assert candidate.ByteSize() < len(folded.raw_data) + 16384
    assert_close(expected, list(run_samples(make_session(candidate), [feeds])[0].values()))

    out = tmp_path / "out"
    out.mkdir()
    save_model(candidate, out / "model.onnx", source=source)
    assert sorted(os.listdir(out)) == ["model.onnx", "model.onnx.data"]
    written = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert not [entry for entry in written.metadata_props if entry.key.startswith("graphopt")]
    offsets = [int(e.value) for t in written.graph.initializer for e in t.external_data if e.key == "offset"]
    assert len(offsets) == 4 and all(offset % 4096 == 0 for offset in offsets)
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert_close(expected, run_ort(out / "model.onnx", feeds))
    assert_close(expected, run_ort(source, feeds))  # the input's files are untouched


def test_api_result_of_an_external_data_model_is_self_contained(tmp_path, feeds):
    source = save_split_all(folded_mlp_model(), tmp_path / "in")
    expected = run_ort(source, feeds)
    result = graphopt.optimize(str(source), passes=["cleanup"])
    assert result.report["passes"][0]["status"] == "accepted"
    assert result.report["input"]["bytes"] > 4 * 3 * HIDDEN * HIDDEN  # the weights on disk count
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in result.model.graph.initializer)
    assert external_folder(result.model) is None
    assert_close(expected, run_ort(result.model, feeds))


def test_api_takes_a_model_graphopt_loaded_with_its_weights_still_on_disk(tmp_path, feeds):
    source = save_split_all(folded_mlp_model(), tmp_path / "in")
    loaded = load_model(source)
    assert external_folder(loaded) is not None
    result = graphopt.optimize(loaded, passes=["cleanup"])
    assert result.report["passes"][0]["status"] == "accepted"
    assert_close(run_ort(source, feeds), run_ort(result.model, feeds))


def test_hard_linked_external_file_is_refused(tmp_path):
    source = save_split(mlp_model(), tmp_path / "in")
    os.link(source.parent / "part1.bin", tmp_path / "elsewhere.bin")
    assert (source.parent / "part1.bin").stat().st_nlink == 2
    with pytest.raises(InputError, match="hard link") as caught:
        load_model(source)
    assert caught.value.exit_code == 2 and caught.value.path == str(source)


def test_external_data_in_a_subfolder_is_allowed_but_dotdot_inside_is_not(tmp_path):
    source = save_split(mlp_model(), tmp_path / "in")
    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value.startswith("weights/"):
                entry.value = "weights/../weights/part2.bin"
    source.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match=r"\.\."):
        load_model(source)


def test_model_proto_with_unloaded_external_data_is_refused_by_the_api(tmp_path):
    source = save_split(mlp_model(), tmp_path / "in")
    proto = onnx.load(str(source), load_external_data=False)
    with pytest.raises(InputError, match="external data"):
        graphopt.optimize(proto, passes=["cleanup"])


# --- atomic writes ------------------------------------------------------------------------


def invalid_model() -> onnx.ModelProto:
    """Serialises fine, fails the checker: an op that does not exist."""
    model = mlp_model()
    model.graph.node[2].op_type = "NoSuchOp"
    return model


@pytest.mark.parametrize("external_data", [False, True], ids=["inline", "external-data"])
def test_failed_save_leaves_no_file_and_no_temporary(tmp_path, external_data):
    target = tmp_path / "out.onnx"
    (tmp_path / "keep.txt").write_text("unrelated")
    with pytest.raises(InputError, match="invalid model") as caught:
        save_model(invalid_model(), target, external_data=external_data)
    assert caught.value.path == str(target)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_failed_save_keeps_the_previous_output(tmp_path):
    target = tmp_path / "out.onnx"
    save_model(mlp_model(), target, external_data=True)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(InputError):
        save_model(invalid_model(), target, external_data=True)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_save_refuses_to_overwrite_its_source(tmp_path):
    source = tmp_path / "model.onnx"
    save_model(mlp_model(), source)
    data = source.read_bytes()
    with pytest.raises(UsageError, match="overwrite"):
        save_model(mlp_model(), tmp_path / "." / "model.onnx", source=source)
    assert source.read_bytes() == data


def test_save_does_not_modify_the_model_it_is_given(tmp_path):
    model = mlp_model()
    snapshot = model.SerializeToString()
    save_model(model, tmp_path / "out.onnx", external_data=True)
    assert model.SerializeToString() == snapshot


# --- round trip ---------------------------------------------------------------------------


def rich_model() -> onnx.ModelProto:
    """A model with what graphsurgeon does not model itself: metadata, doc strings, an old IR version,
    a second opset domain, a local function and an If with subgraphs (each branch with cleanup work)."""
    then_branch = helper.make_graph(
        [
            helper.make_node("Identity", ["scaled"], ["then_tmp"], name="then_identity"),
            helper.make_node("Mul", ["then_tmp", "two"], ["then_out"], name="then_mul"),
        ],
        "then_branch",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 3])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["scaled"], ["else_out"], name="else_neg")],
        "else_branch",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 3])],
    )
    function = helper.make_function(
        "graphopt.test",
        "ScaleShift",
        ["X", "S"],
        ["Y"],
        [
            helper.make_node("Mul", ["X", "S"], ["T"]),
            helper.make_node("Add", ["T", "S"], ["Y"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
        doc_string="local function kept verbatim",
    )
    nodes = [
        helper.make_node("ScaleShift", ["x", "scale"], ["scaled"], name="scale_shift", domain="graphopt.test"),
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="is_positive"),
        helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes,
        "rich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[
            numpy_helper.from_array(np.full((2, 3), 1.5, np.float32), "scale"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.arange(4, dtype=np.float32), "unused"),
        ],
        doc_string="graph doc",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("graphopt.test", 1)],
        ir_version=8,
        functions=[function],
        producer_name="graphopt-tests",
        producer_version="9.9",
        doc_string="model doc: kept by every round trip",
        model_version=42,
        domain="org.graphopt.tests",
    )
    helper.set_model_props(model, {"author": "tests", "license": "Apache-2.0"})
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_round_trip_through_optimize_keeps_what_graphsurgeon_does_not_model(tmp_path, sign):
    original = rich_model()
    source = tmp_path / "rich.onnx"
    onnx.save_model(original, source)
    feeds = {"x": sign * np.arange(1, 7, dtype=np.float32).reshape(2, 3)}
    expected = run_ort(original, feeds)

    result = graphopt.optimize(source, passes=["cleanup"])
    assert result.report["passes"][0]["changed"] is True  # the unused initializer and the then-branch Identity
    out = tmp_path / "rich.opt.onnx"
    save_model(result.model, out, source=source)
    written = load_model(out)

    assert written.ir_version == 8
    assert {(o.domain, o.version) for o in written.opset_import} == {("", 17), ("graphopt.test", 1)}
    assert {(p.key, p.value) for p in written.metadata_props} == {("author", "tests"), ("license", "Apache-2.0")}
    assert written.doc_string == original.doc_string
    assert (written.producer_name, written.producer_version) == ("graphopt-tests", "9.9")
    assert (written.model_version, written.domain) == (42, "org.graphopt.tests")
    assert written.graph.doc_string == "graph doc"

    (function,) = written.functions
    assert (function.domain, function.name) == ("graphopt.test", "ScaleShift")
    assert [n.op_type for n in function.node] == ["Mul", "Add"]
    assert function.doc_string == "local function kept verbatim"
    assert any(n.op_type == "ScaleShift" and n.domain == "graphopt.test" for n in written.graph.node)

    (branch,) = [n for n in written.graph.node if n.op_type == "If"]
    bodies = {a.name: a.g for a in branch.attribute}
    assert set(bodies) == {"then_branch", "else_branch"}
    assert [n.op_type for n in bodies["then_branch"].node] == ["Mul"]  # the Identity went, the Mul stayed
    assert [n.op_type for n in bodies["else_branch"].node] == ["Neg"]
    assert "unused" not in {t.name for t in written.graph.initializer}

    assert_close(expected, run_ort(out, feeds))


def test_load_save_load_is_byte_stable(tmp_path):
    """Without passes, a saved model loads back to the same proto (shape inference aside)."""
    source = tmp_path / "rich.onnx"
    onnx.save_model(rich_model(), source)
    first = load_model(source, infer_shapes=False)
    save_model(first, tmp_path / "copy.onnx")
    second = load_model(tmp_path / "copy.onnx", infer_shapes=False)
    assert second.SerializeToString() == first.SerializeToString()


@pytest.mark.parametrize("field", ["name", "metadata_props"])
def test_invalid_utf8_in_a_weight_s_text_is_refused_naming_the_file(tmp_path, field):
    from graphopt.model_io import read_model

    model = mlp_model()
    lonely = numpy_helper.from_array(np.zeros(2048, np.float32), "lonely_tensor")  # large: left out of the skeleton
    if field == "metadata_props":
        entry = lonely.metadata_props.add()
        entry.key, entry.value = "note", "lonely_note"
    model.graph.initializer.append(lonely)
    data = bytearray(model.SerializeToString())
    needle = b"lonely_tensor" if field == "name" else b"lonely_note"
    data[data.index(needle) + 1] = 0xE8  # same length: the protobuf framing stays valid
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="UTF-8") as error:
        read_model(path)
    assert "corrupt.onnx" in str(error.value)
