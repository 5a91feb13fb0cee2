"""The command line on bad input, and the contracts of its good paths.

Every refusal must look the same (docs/design.md, "The command line"): exit 2, exactly one line on
stderr starting `graphopt: error:`, no traceback, nothing written next to the input, and the
input file's bytes untouched. Most cases call `graphopt.cli.main([...])` in-process (fast);
a few run the installed `graphopt` console script to prove the real entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "demo.onnx"
DEMO_NODES = 61  # examples/demo/build_demo_model.py: the exporter-shaped graph with its litter


# --- helpers -------------------------------------------------------------------------------


def graphopt_script() -> str:
    """The installed console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "graphopt"
    found = str(beside) if beside.exists() else shutil.which("graphopt")
    assert found, "the `graphopt` console script is not installed beside this Python"
    return found


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [graphopt_script(), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(*folders: Path) -> dict[str, list[str]]:
    """Every entry below the folders (hidden temporaries included)."""
    return {
        str(folder): sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) for folder in folders
    }


def assert_one_line_error(err: str, *mentions: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith("graphopt: error: "), lines[0]
    assert "Traceback" not in err
    for mention in mentions:
        assert mention in lines[0], f"{mention!r} not in {lines[0]!r}"
    return lines[0]


def assert_refused(capsys, args, *, folders, untouched=(), mentions=(), code=2) -> str:
    """Runs the CLI and checks the refusal contract; returns the error line."""
    before = listing(*folders)
    contents = {path: path.read_bytes() for path in untouched}
    got, out, err = run_cli(capsys, *args)
    assert got == code, f"exit {got}, expected {code}; stderr: {err}"
    line = assert_one_line_error(err, *mentions)
    assert listing(*folders) == before, "the refused run wrote something"
    for path, data in contents.items():
        assert path.read_bytes() == data, f"{path} was modified"
    return line


def tiny_model(*, batch: int | str = 1) -> onnx.ModelProto:
    """y = Identity(x @ W + b): x [batch, 4] → y [batch, 3], with a bias so weights matter."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
            helper.make_node("Add", ["xw", "b"], ["sum"], name="add"),
            helper.make_node("Identity", ["sum"], ["y"], name="identity"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        initializer=[weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def demo(tmp_path) -> Path:
    """A private copy of the demo model in its own folder: tmp_path/models/demo.onnx."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "demo.onnx"
    shutil.copyfile(DEMO, path)
    return path


def write_external_model(folder: Path, location: str, *, offset: int | None = None, length: int | None = None) -> Path:
    """tiny_model with W stored externally at `location`, written raw (onnx resolves nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def weight_bytes() -> bytes:
    return numpy_helper.to_array(tiny_model().graph.initializer[0]).tobytes()


# --- unreadable or invalid models ---------------------------------------------------------


def test_missing_file(capsys, tmp_path):
    assert_refused(capsys, ["optimize", tmp_path / "missing.onnx"], folders=[tmp_path], mentions=["missing.onnx"])


def test_empty_file(capsys, tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["empty.onnx"])


def test_random_bytes(capsys, tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["noise.onnx"])


def test_truncated_model(capsys, tmp_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(DEMO.read_bytes()[: DEMO.stat().st_size * 2 // 3])
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["truncated.onnx"])


def test_tensor_proto_saved_as_onnx(capsys, tmp_path):
    path = tmp_path / "tensor.onnx"
    path.write_bytes(numpy_helper.from_array(np.arange(64, dtype=np.float32), "t").SerializeToString())
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["tensor.onnx"])


def test_dangling_input(capsys, tmp_path):
    model = tiny_model()
    model.graph.node[1].input[1] = "nothing_produces_this"
    path = tmp_path / "dangling.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["dangling.onnx"])


@pytest.mark.parametrize("needle", [b"graphopt-demo", b"Tiny CNN", b"main_graph", b"stem.conv.weight"],
                         ids=["producer_name", "doc_string", "graph-name", "tensor-name"])
def test_string_field_not_utf8(capsys, tmp_path, needle):
    """proto2 parses invalid UTF-8 in strings; it must still be a bad-input error, not an internal one."""
    data = bytearray(DEMO.read_bytes())
    data[data.index(needle) + 1] = 0xE8  # same length: the protobuf framing stays valid
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(bytes(data))
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["corrupt.onnx"])


# --- external data that would be read from outside the model's folder ----------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file outside the model folder that holds exactly the bytes W needs: only the location is wrong."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(weight_bytes())
    return secret


def test_external_data_escaping_with_dotdot(capsys, tmp_path, outside):
    path = write_external_model(tmp_path / "model", "../secret.bin")
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path, outside], mentions=["model.onnx", ".."])


def test_external_data_at_absolute_path(capsys, tmp_path, outside):
    path = write_external_model(tmp_path / "model", str(outside))
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path, outside], mentions=["model.onnx", "absolute"])


def test_external_data_through_symlink_out_of_folder(capsys, tmp_path, outside):
    path = write_external_model(tmp_path / "model", "weights.bin")
    (tmp_path / "model" / "weights.bin").symlink_to(outside)
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path, outside], mentions=["model.onnx", "link"])


@pytest.mark.parametrize(
    "offset, length",
    [(4096, None), (0, 4096), (40, 48), (8, None)],
    ids=["offset", "length", "offset+length", "tensor-past-end"],
)
def test_external_data_beyond_end_of_file(capsys, tmp_path, offset, length):
    path = write_external_model(tmp_path / "model", "weights.bin", offset=offset, length=length)
    data = tmp_path / "model" / "weights.bin"
    data.write_bytes(weight_bytes())  # 48 bytes
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path, data], mentions=["model.onnx", "weights.bin"])


@pytest.mark.parametrize(
    "entries",
    [{"offset": "abc"}, {"offset": "-8"}, {"length": "-4"}, {"location": "weights\x00.bin"}, {"location": ""}],
    ids=["offset-not-a-number", "negative-offset", "negative-length", "nul-in-location", "empty-location"],
)
def test_external_data_malformed(capsys, tmp_path, entries):
    path = write_external_model(tmp_path / "model", "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(weight_bytes())
    model = onnx.load(str(path), load_external_data=False)
    weight = model.graph.initializer[0]
    for key, value in entries.items():
        if key == "location":
            weight.external_data[0].value = value
        else:
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["model.onnx", "'W'"])


def test_external_data_file_missing(capsys, tmp_path):
    path = write_external_model(tmp_path / "model", "weights.bin")
    assert_refused(capsys, ["optimize", path], folders=[tmp_path], untouched=[path], mentions=["model.onnx", "weights.bin"])


# --- bad usage ----------------------------------------------------------------------------


def test_unknown_pass(capsys, demo):
    assert_refused(capsys, ["optimize", demo, "--passes", "cleanup,no-such-pass"], folders=[demo.parent],
                   untouched=[demo], mentions=["no-such-pass"])


def test_unknown_option(capsys, demo):
    assert_refused(capsys, ["optimize", demo, "--set", "cleanup.no_such_option=1"], folders=[demo.parent],
                   untouched=[demo], mentions=["cleanup.no_such_option"])


@pytest.mark.parametrize("assignment", ["cleanup.fold_growth_limit=lots", "cleanup.cse=maybe"])
def test_option_of_wrong_type(capsys, demo, assignment):
    option = assignment.partition("=")[0]
    assert_refused(capsys, ["optimize", demo, "--set", assignment], folders=[demo.parent], untouched=[demo], mentions=[option])


def test_malformed_set(capsys, demo):
    assert_refused(capsys, ["optimize", demo, "--set", "cleanup"], folders=[demo.parent], untouched=[demo], mentions=["--set"])


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "dotdot", "absolute"])
def test_output_equal_to_input(capsys, demo, monkeypatch, spelling):
    monkeypatch.chdir(demo.parent)
    output = {
        "same": "demo.onnx",
        "dot-slash": "./demo.onnx",
        "dotdot": f"../{demo.parent.name}/demo.onnx",
        "absolute": str(demo),
    }[spelling]
    line = assert_refused(capsys, ["optimize", "demo.onnx", "-o", output], folders=[demo.parent], untouched=[demo])
    assert "overwrite" in line


@pytest.mark.parametrize("target", ["input", "output", "missing-folder"])
def test_report_path_refused_before_any_work(capsys, demo, monkeypatch, target):
    monkeypatch.chdir(demo.parent)
    report = {"input": "./demo.onnx", "output": "demo.opt.onnx", "missing-folder": "no/such/report.json"}[target]
    assert_refused(capsys, ["optimize", "demo.onnx", "--report", report], folders=[demo.parent], untouched=[demo],
                   mentions=["report"])


def test_output_data_file_would_replace_input_data(capsys, tmp_path):
    """`-o out.onnx --external-data` must not write over `out.onnx.data` when the input reads its weights from it."""
    source = tmp_path / "in.onnx"
    onnx.save_model(tiny_model(), source, save_as_external_data=True, location="out.onnx.data", size_threshold=0)
    data = tmp_path / "out.onnx.data"
    assert_refused(capsys, ["optimize", source, "-o", tmp_path / "out.onnx", "--external-data"], folders=[tmp_path],
                   untouched=[source, data], mentions=["out.onnx.data"])


def test_output_is_a_folder(capsys, demo):
    (demo.parent / "out.onnx").mkdir()
    assert_refused(capsys, ["optimize", demo, "-o", demo.parent / "out.onnx"], folders=[demo.parent], untouched=[demo],
                   mentions=["out.onnx"])


def test_output_equal_to_the_input_external_data_file(capsys, tmp_path):
    source = tmp_path / "in.onnx"
    onnx.save_model(tiny_model(), source, save_as_external_data=True, location="weights.bin", size_threshold=0)
    data = tmp_path / "weights.bin"
    assert_refused(capsys, ["optimize", source, "-o", data], folders=[tmp_path], untouched=[source, data],
                   mentions=["weights.bin"])


def test_missing_output_folder(capsys, demo):
    output = demo.parent / "no" / "such" / "out.onnx"
    assert_refused(capsys, ["optimize", demo, "-o", output], folders=[demo.parent], untouched=[demo], mentions=["out.onnx"])


def test_inputs_file_missing(capsys, demo):
    missing = demo.parent / "nope.npz"
    assert_refused(capsys, ["optimize", demo, "--inputs", missing], folders=[demo.parent], untouched=[demo], mentions=["nope.npz"])


def test_inputs_file_names_no_model_input(capsys, demo, tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, pixels=np.zeros((2, 3, 32, 32), np.float32))
    assert_refused(capsys, ["optimize", demo, "--inputs", npz], folders=[tmp_path], untouched=[demo, npz],
                   mentions=["pixels", "image", "inputs.npz"])


@pytest.mark.parametrize("content", ["not-an-npz", "strings", "no-samples"])
def test_inputs_file_unusable(capsys, demo, tmp_path, content):
    npz = tmp_path / "inputs.npz"
    if content == "not-an-npz":
        npz.write_bytes(b"PK\x03\x04 but not really a zip file")
    elif content == "strings":
        np.savez(npz, image=np.full((1, 3, 32, 32), "pixel"))
    else:
        np.savez(npz, image=np.zeros((0, 3, 32, 32), np.float32))
    assert_refused(capsys, ["optimize", demo, "--inputs", npz], folders=[tmp_path], untouched=[demo, npz], mentions=["inputs.npz"])


def test_inputs_file_with_wrong_shape(capsys, demo, tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, image=np.zeros((2, 3, 16, 16), np.float32))
    assert_refused(capsys, ["optimize", demo, "--inputs", npz], folders=[tmp_path], untouched=[demo, npz],
                   mentions=["image", "inputs.npz"])


def test_dynamic_dimension_without_input_shape_is_chosen(capsys, tmp_path):
    path = tmp_path / "dynamic.onnx"
    onnx.save_model(tiny_model(batch="batch_size"), path)
    code, out, err = run_cli(capsys, "optimize", path)
    assert code == 0, err
    assert "input 'x' at 1x4" in out and "'batch_size': batch-like leading dim" in out


def test_dynamic_dimension_with_input_shape_runs(capsys, tmp_path):
    path = tmp_path / "dynamic.onnx"
    onnx.save_model(tiny_model(batch="batch_size"), path)
    code, _, err = run_cli(capsys, "optimize", path, "--input-shape", "x=2,4", "--quiet")
    assert code == 0, err
    assert (tmp_path / "dynamic.opt.onnx").is_file()


def test_bad_input_shape(capsys, demo):
    assert_refused(capsys, ["optimize", demo, "--input-shape", "image=1,3,abc"], folders=[demo.parent], untouched=[demo],
                   mentions=["--input-shape"])


def test_unknown_argument(capsys, demo):
    assert_refused(capsys, ["optimize", demo, "--frobnicate"], folders=[demo.parent], untouched=[demo], mentions=["--frobnicate"])


def test_bad_subcommand_inputs_for_inspect_verify_bench(capsys, tmp_path):
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(b"\x00\x01garbage" * 10)
    for args in (["inspect", noise], ["verify", DEMO, noise], ["bench", noise, "--runs", "1"]):
        assert_refused(capsys, args, folders=[tmp_path], untouched=[noise], mentions=["noise.onnx"])


# --- the real entry point -----------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["missing", "noise", "unknown-pass"],
)
def test_console_script_refuses_with_one_line(tmp_path, case):
    model = tmp_path / "model.onnx"
    args = {"missing": ["optimize", model], "noise": ["optimize", model], "unknown-pass": ["optimize", model, "--passes", "nope"]}[case]
    if case == "noise":
        model.write_bytes(np.random.default_rng(3).bytes(1000))
    elif case == "unknown-pass":
        shutil.copyfile(DEMO, model)
    before = listing(tmp_path)
    data = model.read_bytes() if model.exists() else None
    done = run_script(*args)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, "model.onnx" if case != "unknown-pass" else "nope")
    assert done.stdout == ""
    assert listing(tmp_path) == before
    if data is not None:
        assert model.read_bytes() == data


def test_console_script_external_data_escape(tmp_path, outside):
    path = write_external_model(tmp_path / "model", "../secret.bin")
    before = listing(tmp_path)
    done = run_script("optimize", path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "model.onnx")
    assert listing(tmp_path) == before


def test_console_script_debug_prints_traceback(tmp_path):
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(3).bytes(1000))
    done = run_script("optimize", noise, "--debug")
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("graphopt: error: ")
    assert listing(tmp_path) == {str(tmp_path): ["noise.onnx"]}


def test_console_script_optimizes(tmp_path):
    model = tmp_path / "demo.onnx"
    shutil.copyfile(DEMO, model)
    done = run_script("optimize", model, "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "Traceback" not in done.stdout
    onnx.checker.check_model(str(tmp_path / "demo.opt.onnx"), full_check=True)


# --- good paths: naming, report, dumps, recipes -------------------------------------------


def test_default_output_name(capsys, demo):
    code, out, err = run_cli(capsys, "optimize", demo)
    assert code == 0, err
    written = demo.parent / "demo.opt.onnx"
    assert written.is_file()
    assert f"wrote {written}" in out
    assert sorted(p.name for p in demo.parent.iterdir()) == ["demo.onnx", "demo.opt.onnx"]
    assert demo.read_bytes() == DEMO.read_bytes()
    optimized = onnx.load(str(written))
    assert len(optimized.graph.node) < DEMO_NODES
    assert [o.name for o in optimized.graph.output] == ["logits"]


def test_default_output_name_without_onnx_suffix(capsys, tmp_path):
    model = tmp_path / "net.model"
    shutil.copyfile(DEMO, model)
    code, _, err = run_cli(capsys, "optimize", model, "--quiet")
    assert code == 0, err
    assert (tmp_path / "net.model.opt.onnx").is_file()


def test_report_contents(capsys, demo, tmp_path):
    report_path = tmp_path / "report.json"
    output = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "optimize", demo, "-o", output, "--report", report_path, "--quiet")
    assert code == 0, err
    assert err == ""
    report = json.loads(report_path.read_text())
    assert report["schema"] == "graphopt.report/1"
    for side in ("input", "output"):
        for key in ("bytes", "nodes", "parameters", "macs", "ops"):
            assert key in report[side], (side, key)
    assert report["input"]["nodes"] == DEMO_NODES
    assert report["output"]["nodes"] == len(onnx.load(str(output)).graph.node)
    (entry,) = report["passes"]
    for key in ("name", "options", "changed", "seconds", "nodes_before", "nodes_after", "details", "verification"):
        assert key in entry, key
    assert entry["name"] == "cleanup"
    assert entry["changed"] is True
    assert entry["options"]["fold_constants"] is True
    assert entry["nodes_before"] == DEMO_NODES and entry["nodes_after"] == report["output"]["nodes"]
    assert entry["details"]["passthrough_removed"] == 2  # the Identity and the Dropout
    assert entry["seconds"] >= 0
    assert entry["verification"]["ok"] is True and entry["verification"]["outputs"]["logits"]["within"] is True
    end_to_end = report["verification"]["end_to_end"]
    assert report["verification"]["mode"] == "each"
    assert end_to_end["ok"] is True and "logits" in end_to_end["outputs"]


def test_report_written_when_verification_fails(capsys, tmp_path):
    """A failed run writes its report (when asked) but no model."""
    pytest.importorskip("graphopt_example_plugin", reason="covered by tests/plugins when the example plugin is missing")
    model = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_model(), model)
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(capsys, "optimize", model, "--passes", "scale-weights", "--set", "scale-weights.factor=2",
                           "--report", report_path)
    assert code == 1
    assert_one_line_error(err, "scale-weights")
    report = json.loads(report_path.read_text())
    assert report["schema"] == "graphopt.report/1"
    assert report["passes"][0]["rolled_back"] is True
    assert not (tmp_path / "tiny.opt.onnx").exists()


def test_dump_dir(capsys, demo, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    code, _, err = run_cli(capsys, "optimize", demo, "--dump-dir", dumps, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in dumps.iterdir()) == ["01_cleanup.onnx"]
    onnx.checker.check_model(str(dumps / "01_cleanup.onnx"), full_check=True)


def test_dump_dir_missing(capsys, demo):
    assert_refused(capsys, ["optimize", demo, "--dump-dir", demo.parent / "nope"], folders=[demo.parent], untouched=[demo],
                   mentions=["dump"])


def test_recipe(capsys, demo, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('passes = ["cleanup"]\nverify = "end"\n\n[cleanup]\nfold_constants = false\ncse = false\n')
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(capsys, "optimize", demo, "--recipe", recipe, "--report", report_path, "--quiet")
    assert code == 0, err
    report = json.loads(report_path.read_text())
    (entry,) = report["passes"]
    assert entry["options"]["fold_constants"] is False and entry["options"]["cse"] is False
    assert entry["details"]["constants_folded"] == 0
    assert report["verification"]["mode"] == "end"
    assert report["verification"]["end_to_end"]["ok"] is True


def test_recipe_set_overrides_table(capsys, demo, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('passes = ["cleanup"]\n[cleanup]\nfold_constants = false\n')
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(capsys, "optimize", demo, "--recipe", recipe, "--set", "cleanup.fold_constants=true",
                           "--report", report_path, "--quiet")
    assert code == 0, err
    assert json.loads(report_path.read_text())["passes"][0]["options"]["fold_constants"] is True


@pytest.mark.parametrize(
    "text, mention",
    [
        ('passes = ["cleanup"]\n[cleanup]\nno_such_option = 1\n', "cleanup.no_such_option"),
        ('passes = ["cleanup"]\nfrobnicate = 3\n', "frobnicate"),
        ('passes = ["cleanup"]\n[cleanup]\nfold_constants = "yes please"\n', "cleanup.fold_constants"),
        ('passes = ["cleanup"\n', "recipe.toml"),
        ('passes = ["cleanup"]\n[prune]\nsparsity = 0.5\n', "prune"),
    ],
    ids=["unknown-option", "unknown-top-level-key", "wrong-type", "not-toml", "unknown-pass-table"],
)
def test_bad_recipe(capsys, demo, tmp_path, text, mention):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    assert_refused(capsys, ["optimize", demo, "--recipe", recipe], folders=[tmp_path], untouched=[demo, recipe], mentions=[mention])


def test_missing_recipe(capsys, demo, tmp_path):
    assert_refused(capsys, ["optimize", demo, "--recipe", tmp_path / "none.toml"], folders=[tmp_path], untouched=[demo],
                   mentions=["none.toml"])


# --- passes, inspect, verify, bench -------------------------------------------------------


def test_passes_json_lists_cleanup(capsys):
    code, out, err = run_cli(capsys, "passes", "--json")
    assert code == 0, err
    listing_ = json.loads(out)
    cleanup = next(entry for entry in listing_["passes"] if entry["name"] == "cleanup")
    assert cleanup["plugin"] == "cleanup"
    assert cleanup["lossless"] is True
    assert cleanup["description"]
    options = {option["name"]: option for option in cleanup["options"]}
    assert options["fold_constants"]["type"] == "bool" and options["fold_constants"]["default"] is True
    assert options["fold_growth_limit"]["type"] == "int" and options["fold_growth_limit"]["help"]


def test_inspect_json_counts_nodes_and_macs(capsys, tmp_path):
    # Conv 1x3x8x8 → 4 channels, 3x3, pad 1: 4*8*8 outputs × 3*3*3 = 6912 MACs; Gemm 1x256 @ 256x10: 2560.
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("Gemm", ["f", "g"], ["y"]),
        ],
        "macs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "g"),
        ],
    )
    path = tmp_path / "macs.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, out, err = run_cli(capsys, "inspect", path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["nodes"] == 4
    assert summary["ops"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "Relu": 1}
    assert summary["macs"] == 6912 + 2560
    assert summary["parameters"] == 4 * 27 + 2560
    assert summary["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}]

    code, out, _ = run_cli(capsys, "inspect", DEMO, "--json")
    assert code == 0 and json.loads(out)["nodes"] == DEMO_NODES


def test_verify_equal_models(capsys, demo, tmp_path):
    code, _, err = run_cli(capsys, "optimize", demo, "-o", tmp_path / "opt.onnx", "--quiet")
    assert code == 0, err
    code, out, err = run_cli(capsys, "verify", demo, tmp_path / "opt.onnx", "--json")
    assert code == 0, err
    verdict = json.loads(out)
    assert verdict["ok"] is True and verdict["outputs"]["logits"]["within"] is True


def test_verify_changed_weights_fails_and_names_first_divergence(capsys, demo, tmp_path):
    model = onnx.load(str(demo))
    for tensor in model.graph.initializer:
        if tensor.name == "layer1.conv2.conv.weight":
            values = numpy_helper.to_array(tensor) * 1.5
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), tensor.name))
    changed = tmp_path / "changed.onnx"
    onnx.save_model(model, changed)
    code, out, err = run_cli(capsys, "verify", demo, changed)
    assert code == 1
    assert_one_line_error(err, "changed.onnx", "logits")
    assert "first divergence: node '/layer1/conv2/conv/Conv'" in out

    code, out, err = run_cli(capsys, "verify", demo, changed, "--json")
    assert code == 1
    verdict = json.loads(out)
    assert verdict["ok"] is False
    assert verdict["first_divergence"]["node"] == "/layer1/conv2/conv/Conv"
    assert verdict["first_divergence"]["op"] == "Conv"


def test_bench_json(capsys, tmp_path):
    code, out, err = run_cli(capsys, "bench", DEMO, "--runs", "3", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["model"] == str(DEMO)
    assert row["runs"] == 3 and row["threads"] == 1
    assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]


def test_bench_rejects_zero_runs(capsys):
    code, _, err = run_cli(capsys, "bench", DEMO, "--runs", "0")
    assert code == 2
    assert_one_line_error(err, "--runs")


def test_rerun_with_external_data_from_the_output_folder(capsys, demo, monkeypatch):
    """onnx.save_model(save_as_external_data=True) looks for the data file in the *current* folder;
    a second run from the model's folder must replace the first run's output, not crash."""
    monkeypatch.chdir(demo.parent)
    for _ in range(2):
        code, _, err = run_cli(capsys, "optimize", "demo.onnx", "--external-data", "--quiet")
        assert code == 0, err
    assert sorted(os.listdir(demo.parent)) == ["demo.onnx", "demo.opt.onnx", "demo.opt.onnx.data"]
    onnx.checker.check_model("demo.opt.onnx", full_check=True)


def test_output_is_never_left_half_written(capsys, demo):
    """A successful run leaves exactly the output beside the input: no staging folders or temporaries."""
    code, _, err = run_cli(capsys, "optimize", demo, "--external-data", "--quiet")
    assert code == 0, err
    assert sorted(os.listdir(demo.parent)) == ["demo.onnx", "demo.opt.onnx", "demo.opt.onnx.data"]
