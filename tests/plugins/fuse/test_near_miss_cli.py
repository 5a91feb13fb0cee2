"""`graphopt optimize --debug` shows why a fuse pattern did not fire (ctx.near_miss)."""

import onnx
from fuse_support import model_from_text

from graphopt.cli import main

GELU_AT_18 = """
    g (float[2,8] x) => (float[2,8] y) <float s2 = {1.4142135}, float one = {1.0}, float half = {0.5}> {
        d = Div(x, s2)
        r = Erf(d)
        e = Add(r, one)
        m = Mul(x, e)
        y = Mul(m, half)
    }"""


def test_debug_lists_the_near_miss_with_its_reason(tmp_path, capsys):
    path = tmp_path / "gelu.onnx"
    onnx.save(model_from_text(GELU_AT_18, opset=18), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--passes", "fuse", "--debug"]) == 0
    err = capsys.readouterr().err
    assert "fuse.gelu: Erf" in err
    assert "GELU(s) left written out for onnxruntime to fuse at load (or fuse.target=onnxruntime): Gelu needs opset 20" in err


def test_without_debug_near_misses_are_not_shown(tmp_path, capsys):
    path = tmp_path / "gelu.onnx"
    onnx.save(model_from_text(GELU_AT_18, opset=18), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--passes", "fuse"]) == 0
    assert "not rewritten" not in capsys.readouterr().err


def test_a_near_miss_is_logged_once_though_the_fix_point_takes_several_rounds(tmp_path, capsys):
    """The Transpose pair fires in round 1, so round 2 revisits the Gelu site that cannot fuse."""
    text = GELU_AT_18.replace("y = Mul(m, half)", "h = Mul(m, half)\n        t = Transpose <perm = [1, 0]> (h)\n        y = Transpose <perm = [1, 0]> (t)")
    path = tmp_path / "gelu_transposes.onnx"
    onnx.save(model_from_text(text, opset=18), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--passes", "fuse", "--debug"]) == 0
    err = capsys.readouterr().err
    assert "transpose_chain" in err  # it fired, so a second round ran
    assert err.count("fuse.gelu: Erf") == 1
