"""`graphopt partition`, `graphopt run` and `graphopt optimize --partition`: outputs, exit codes, nothing partial."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import torch_models
from graphopt.cli import main


@pytest.fixture()
def encoder(tmp_path):
    path = tmp_path / "encoder.onnx"
    onnx.save(torch_models.transformer(), path)
    feeds = torch_models.transformer_feeds()
    np.savez(tmp_path / "x.npz", **{name: np.stack([value, value % 7]) for name, value in feeds.items()})
    return path


def test_partition_then_run_writes_stages_manifest_and_outputs(encoder, tmp_path, capsys):
    folder, report = tmp_path / "stages", tmp_path / "report.json"
    assert main(["partition", str(encoder), "--stages", "2", "-o", str(folder), "--by", "macs",
                 "--inputs", str(tmp_path / "x.npz"), "--report", str(report)]) == 0
    assert "chain verified on 2 file sample(s): bit-exact" in capsys.readouterr().out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema"] == "graphopt.partition/1" and [s["file"] for s in manifest["stages"]] == ["stage_0.onnx", "stage_1.onnx"]
    for stage in manifest["stages"]:
        onnx.checker.check_model(str(folder / stage["file"]), full_check=True)
    assert json.loads(report.read_text())["verification"]["bit_exact"]
    assert main(["run", str(folder), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"), "--quiet"]) == 0
    with np.load(tmp_path / "y.npz") as outputs:
        assert outputs["hidden"].shape[0] == 2
    assert main(["run", str(folder), "--inputs", str(tmp_path / "x.npz"), "--samples-per-call", "0"]) == 2
    assert "--samples-per-call must be at least 1" in capsys.readouterr().err


def test_optimize_with_partition_cuts_the_optimized_model(encoder, tmp_path, capsys):
    folder = tmp_path / "optimized_stages"
    assert main(["optimize", str(encoder), "--passes", "cleanup,fuse", "--partition", "3", "--partition-by", "macs",
                 "-o", str(folder)]) == 0
    assert "3 stages" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "stage_0.onnx", "stage_1.onnx", "stage_2.onnx"]


def test_bad_output_folder_is_refused_before_any_work(encoder, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert main(["partition", str(encoder), "--stages", "2", "-o", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.strip().startswith("graphopt: error: -o must be a folder")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["partition", str(encoder), "--stages", "2", "-o", str(tmp_path / "busy")]) == 2
    assert main(["partition", str(encoder), "--stages", "0", "-o", str(tmp_path / "z")]) == 2
    assert main(["run", str(tmp_path / "nowhere"), "--inputs", str(tmp_path / "x.npz")]) == 2
    assert "no partition manifest" in capsys.readouterr().err


def test_a_chain_that_disagrees_exits_1_and_writes_nothing(encoder, tmp_path, monkeypatch, capsys):
    from graphopt.partition import api as partition_api

    real = partition_api.run_chain

    def perturbed(stages, samples, **kwargs):
        return [{name: value + 1.0 for name, value in result.items()} for result in real(stages, samples, **kwargs)]

    monkeypatch.setattr(partition_api, "run_chain", perturbed)
    folder = tmp_path / "stages"
    assert main(["partition", str(encoder), "--stages", "2", "-o", str(folder), "--by", "macs"]) == 1
    assert "differ from the whole model" in capsys.readouterr().err
    assert not folder.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".graphopt")]


def test_run_refuses_an_unwritable_output_before_reading_anything(tmp_path, capsys):
    # /proc: no one may create files there, root included; neither the stages folder nor the
    # inputs exist, so the output is what is checked first
    assert main(["run", str(tmp_path / "nowhere"), "--inputs", str(tmp_path / "none.npz"), "-o", "/proc/y.npz"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "graphopt: error: output folder '/proc' is not writable (/proc/y.npz)"
    assert main(["run", str(tmp_path / "nowhere"), "--inputs", str(tmp_path / "none.npz"), "-o", str(tmp_path / "no" / "y.npz")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err
