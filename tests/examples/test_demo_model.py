"""The committed demo model is exactly what its build script makes, and graphopt optimizes it."""

import hashlib
import subprocess
import sys
from pathlib import Path

import onnx

import graphopt

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def test_build_script_reproduces_the_committed_model(tmp_path):
    rebuilt = tmp_path / "demo.onnx"
    subprocess.run([sys.executable, str(DEMO / "build_demo_model.py"), str(rebuilt)], check=True, capture_output=True)
    assert hashlib.sha256(rebuilt.read_bytes()).digest() == hashlib.sha256((DEMO / "demo.onnx").read_bytes()).digest()


def test_cleanup_on_the_demo_model_removes_what_the_exporter_left():
    result = graphopt.optimize(str(DEMO / "demo.onnx"), passes=["cleanup"])
    details = result.report["passes"][0]["details"]
    ops = [node.op_type for node in result.model.graph.node]
    assert not {"Identity", "Dropout", "Shape", "Constant"} & set(ops)
    assert details["passthrough_removed"] == 2 and details["constants_folded"] > 0
    assert result.report["verification"]["end_to_end"]["ok"]
    onnx.checker.check_model(result.model, full_check=True)
