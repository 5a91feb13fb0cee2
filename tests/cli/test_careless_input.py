"""Careless input found by a first try, and output paths checked before any work (issue 17)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt.cli import main
from graphopt.errors import UsageError
from trait_models import dynamic_cnn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(dynamic_cnn(17), path)
    return path


def refused(capsys, *args) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("graphopt: error:")
    return err


def test_input_shape_contradicting_inputs_names_both(capsys, model_path, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, image=np.zeros((1, 1, 3, 64, 64), np.float32))
    err = refused(capsys, "optimize", model_path, "--inputs", npz, "--input-shape", "image=1,3,32,32")
    assert "--input-shape image=1,3,32,32" in err and "--inputs" in err
    assert not (tmp_path / "m.opt.onnx").exists()


@pytest.mark.parametrize("budget", ["cos=1.5", "cos=0", "cos=-0.5", "sqnr=inf", "sqnr=nan", "abs=-1", "rel=-0.1"])
def test_out_of_range_budget_is_refused(capsys, model_path, budget):
    assert "--budget" in refused(capsys, "optimize", model_path, "--budget", budget)


def test_empty_passes_is_refused_not_cleanup(capsys, model_path, tmp_path):
    assert "--passes" in refused(capsys, "optimize", model_path, "--passes", "")
    assert not (tmp_path / "m.opt.onnx").exists()


def test_misspelled_pass_and_option_get_a_suggestion(capsys, model_path):
    assert "did you mean 'fuse'?" in refused(capsys, "optimize", model_path, "--passes", "cleanup,fuze")
    assert "did you mean 'max_rounds'?" in refused(capsys, "optimize", model_path, "--passes", "fuse", "--set", "fuse.max_round=2")


def test_api_errors_quote_api_parameters_not_flags():
    model = dynamic_cnn(17)
    with pytest.raises(UsageError) as error:
        graphopt.optimize(model, inputs={"image": np.zeros((1, 1, 3, 64, 64), np.float32)}, input_shapes={"image": (1, 3, 32, 32)})
    assert "input_shapes=" in str(error.value) and "inputs=" in str(error.value) and "--" not in str(error.value)
    with pytest.raises(UsageError, match=r"^budget=: cos must be in \(0, 1\]"):
        graphopt.optimize(model, budget="cos=1.5")
    with pytest.raises(UsageError, match="passes="):
        graphopt.optimize(model, passes="")


def _unwritable_folders(tmp_path) -> list[Path]:
    """Folders no one may create files in: /proc (even as root), and a chmod 555 folder when the
    permission bits mean something (not root, who bypasses them)."""
    folders = [Path("/proc")] if Path("/proc/self").exists() else []
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        folders.append(locked)
    return folders


def test_unwritable_output_folder_is_exit_2_before_any_pass(capsys, model_path, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    folders = _unwritable_folders(tmp_path)
    assert folders, "no unwritable folder to test with"
    for folder in folders:
        err = refused(capsys, "optimize", model_path, "-o", folder / "out.onnx", "--dump-dir", dumps)
        assert re.search(rf"output folder '{re.escape(str(folder))}' is not writable", err)
        assert list(dumps.iterdir()) == []  # no pass ran
    with pytest.raises(UsageError, match="output folder"):
        graphopt.optimize_to_file(dynamic_cnn(17), folders[0] / "out.onnx", passes="cleanup")


def test_unwritable_report_folder_is_exit_2_and_nothing_is_written(capsys, model_path, tmp_path):
    for folder in _unwritable_folders(tmp_path):
        err = refused(capsys, "optimize", model_path, "--report", folder / "report.json")
        assert f"report folder '{folder}' is not writable" in err
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "locked") == ["m.onnx"]


def test_readme_tests_run_in_their_own_environment():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "pytest" in line and "pip install" in line]
    assert commands and all(".venv-test" in line and ".venv/" not in line for line in commands)
    run = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv-test" in run and ". .venv-test/bin/activate" in run and ".venv/" not in run


def test_a_failing_pass_is_exit_3_and_writes_nothing(capsys, model_path, tmp_path):
    code = main(["optimize", str(model_path), "--passes", "cleanup,explode", "--report", str(tmp_path / "r.json")])
    assert code == 3, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no model, no report, no temp file


def test_input_shape_naming_no_input_is_refused(capsys, model_path):
    err = refused(capsys, "optimize", model_path, "--input-shape", "imgae=1,3,64,64")
    assert "--input-shape names no model input: 'imgae'; did you mean 'image'?" in err


def _opset6_broadcast_add(path: Path) -> Path:
    """Add with opset 6's `broadcast` attribute: onnxruntime has no kernel for it, onnx's converter
    rewrites it to opset 7's implicit broadcasting."""
    value = onnx.helper.make_tensor_value_info
    bias = onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32), "bias")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "bias"], ["y"], broadcast=1, axis=1)], "old",
                                   [value("x", onnx.TensorProto.FLOAT, [2, 4]), value("bias", onnx.TensorProto.FLOAT, [4])],
                                   [value("y", onnx.TensorProto.FLOAT, [2, 4])], [bias])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 6)], ir_version=3), path)
    return path


def test_a_model_onnxruntime_has_no_kernel_for_says_inputs_cannot_help(capsys, tmp_path):
    old = _opset6_broadcast_add(tmp_path / "old.onnx")
    err = refused(capsys, "optimize", old, "-o", tmp_path / "out.onnx")
    assert "no kernel" in err and "--verify off" in err and "'opset'" in err and "--inputs" not in err
    assert not (tmp_path / "out.onnx").exists()
    assert main([str(a) for a in ("optimize", old, "--passes", "opset,cleanup", "--verify", "off", "-o", tmp_path / "out.onnx")]) == 0
    converted = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(converted, full_check=True)
    assert max(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")) >= 7
    x = np.ones((2, 4), np.float32)
    got = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x + np.arange(4, dtype=np.float32))
