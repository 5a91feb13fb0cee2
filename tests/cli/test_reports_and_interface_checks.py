"""CLI behaviours: error messages name the file, a report is an ordinary readable file (also when
verification fails, with the input summary), verify refuses a candidate with other inputs."""

import json
import os
import shutil
import stat
from pathlib import Path

import onnx
import onnx.parser

from graphopt.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "demo.onnx"


def test_report_is_an_ordinary_readable_file(tmp_path):
    model = shutil.copy(DEMO, tmp_path / "demo.onnx")
    report = tmp_path / "report.json"
    assert main(["optimize", str(model), "--report", str(report), "--quiet"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~umask
    assert json.loads(report.read_text())["input"]["nodes"] == 61


def test_verify_refuses_a_candidate_with_other_inputs(tmp_path, capsys):
    reference = tmp_path / "a.onnx"
    candidate = tmp_path / "b.onnx"
    onnx.save(onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] x) => (float[2] y) { y = Neg(x) }'), reference)
    onnx.save(onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] z) => (float[2] y) { y = Neg(z) }'), candidate)
    assert main(["verify", str(reference), str(candidate)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("graphopt: error: the candidate's inputs differ") and err.rstrip().endswith(f"({candidate})")


def test_a_failed_verification_report_carries_the_input_summary(tmp_path):
    model = shutil.copy(DEMO, tmp_path / "demo.onnx")
    report = tmp_path / "report.json"
    # The example plugin's lossy pass, scaling a weight 3x, cannot keep cosine 0.99999.
    code = main(["optimize", str(model), "--passes", "scale-weights", "--set", "scale-weights.factor=3.0",
                 "--set", "scale-weights.budget=cos=0.99999", "--report", str(report), "--quiet"])
    assert code == 1
    document = json.loads(report.read_text())
    assert document["failed"].startswith("pass 'scale-weights' failed verification")
    assert document["input"]["nodes"] == 61
    assert not (tmp_path / "demo.opt.onnx").exists()
