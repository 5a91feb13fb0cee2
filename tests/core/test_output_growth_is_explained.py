"""A result larger than its input says why (report warnings, and the CLI's last lines)."""

from __future__ import annotations

import subprocess
import sys

import onnx

import graphopt
from graphopt.report import growth_warnings

# A 128x128 weight the model computes when it runs (ConstantOfShape): cleanup folds and stores it.
GENERATED_WEIGHT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 128] x) => (float[1, 128] y) {
    shape = Constant<value = int64[2] {128, 128}>()
    w = ConstantOfShape<value = float[1] {0.5}>(shape)
    y = MatMul(x, w)
}"""


def test_a_folded_generated_weight_grows_the_output_and_the_report_names_the_pass():
    model = onnx.parser.parse_model(GENERATED_WEIGHT)
    result = graphopt.optimize(model, passes=["cleanup"], never_slower=False)
    assert result.report["output"]["bytes"] > result.report["input"]["bytes"]
    (warning,) = [w for w in result.report["warnings"] if "larger than the input" in w]
    assert "cleanup" in warning and "ConstantOfShape" in warning


def test_the_cli_prints_the_warning_with_the_summary(tmp_path):
    source = tmp_path / "generated.onnx"
    onnx.save(onnx.parser.parse_model(GENERATED_WEIGHT), source)
    done = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(source), "--passes", "cleanup",
                           "-o", str(tmp_path / "out.onnx")], capture_output=True, text=True, check=True)
    assert any(line.startswith("warning: the output (") for line in done.stdout.splitlines()), done.stdout


def test_no_growth_no_warning():
    assert growth_warnings(100, 100, []) == [] and growth_warnings(100, 90, []) == [] and growth_warnings(None, 90, []) == []
    entries = [{"name": "fuse", "status": "accepted", "bytes_before": 10, "bytes_after": 30}]
    (warning,) = growth_warnings(10, 30, entries)
    assert "fuse 10 -> 30" in warning
