"""A third-party plugin, installed like any other: discovery, options, reports, failures, ordering.

Needs `graphopt-example-plugin` (tests/plugin_pkg) installed — `pip install ./tests/plugin_pkg`,
as the CI does. Without it these tests fail (they do not skip): the plugin contract would
otherwise go untested without anyone noticing.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.registry import load_registry

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "demo.onnx"
PLUGIN_DIST = "graphopt-example-plugin"
EXAMPLE_PASSES = {"drop-identity", "scale-weights", "explode"}


def _missing_plugin_message() -> str | None:
    try:
        importlib.metadata.distribution(PLUGIN_DIST)
    except importlib.metadata.PackageNotFoundError:
        return (f"the {PLUGIN_DIST} distribution is not installed; install it with "
                f"`pip install ./tests/plugin_pkg` (the CI does) and run the tests again")
    return None


def test_example_plugin_is_installed():
    message = _missing_plugin_message()
    if message:
        pytest.fail(message)


@pytest.fixture(autouse=True)
def _require_example_plugin(request):
    if request.node.name != "test_example_plugin_is_installed" and (message := _missing_plugin_message()):
        pytest.fail(message)


# --- helpers -------------------------------------------------------------------------------


def graphopt_script() -> str:
    beside = Path(sys.executable).parent / "graphopt"
    found = str(beside) if beside.exists() else shutil.which("graphopt")
    assert found, "the `graphopt` console script is not installed beside this Python"
    return found


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, *mentions: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("graphopt: error: ") and "Traceback" not in err
    for mention in mentions:
        assert mention in lines[0], f"{mention!r} not in {lines[0]!r}"
    return lines[0]


def biased_model() -> onnx.ModelProto:
    """y = x @ W + b, W the first float initializer; doubling W (not b) turns y away from its direction."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
            helper.make_node("Add", ["xw", "b"], ["y"], name="bias"),
        ],
        "biased",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 2, "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def demo(tmp_path) -> Path:
    path = tmp_path / "demo.onnx"
    shutil.copyfile(DEMO, path)
    return path


@pytest.fixture
def biased(tmp_path) -> Path:
    path = tmp_path / "biased.onnx"
    onnx.save_model(biased_model(), path)
    return path


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def make_plugin_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


# --- discovery ----------------------------------------------------------------------------


def test_passes_lists_the_plugin_passes(capsys):
    code, out, err = run_cli(capsys, "passes", "--json")
    assert code == 0, err
    listing = {entry["name"]: entry for entry in json.loads(out)["passes"]}
    assert EXAMPLE_PASSES <= set(listing)
    assert {listing[name]["plugin"] for name in EXAMPLE_PASSES} == {"example"}
    assert listing["cleanup"]["plugin"] == "cleanup"
    drop = listing["drop-identity"]
    assert drop["lossless"] is True and drop["description"].startswith("Removes Identity nodes")
    options = {option["name"]: option for option in drop["options"]}
    assert options["keep_outputs"] == {"name": "keep_outputs", "type": "bool", "default": True,
                                       "help": "keep an Identity whose output is a graph output"}
    assert options["min_count"]["type"] == "int" and options["min_count"]["default"] == 0
    scale = listing["scale-weights"]
    assert scale["lossless"] is False
    assert {o["name"]: (o["type"], o["default"]) for o in scale["options"]} == {
        "factor": ("float", 1.0), "budget": ("str", "cos=0.999")}

    code, out, _ = run_cli(capsys, "passes")
    assert code == 0
    assert "drop-identity  [example, lossless]" in out and "scale-weights  [example, lossy]" in out
    assert "keep_outputs (bool, default True)  keep an Identity whose output is a graph output" in out


def test_console_script_lists_the_plugin_passes():
    done = subprocess.run([graphopt_script(), "passes", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listing = {entry["name"]: entry["plugin"] for entry in json.loads(done.stdout)["passes"]}
    assert {name: listing.get(name) for name in EXAMPLE_PASSES} == dict.fromkeys(EXAMPLE_PASSES, "example")


# --- running, options, stats ----------------------------------------------------------------


def test_runs_from_the_command_line(capsys, demo, tmp_path):
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "optimize", demo, "--passes", "drop-identity", "--set", "drop-identity.min_count=0",
                             "--report", report_path)
    assert code == 0, err
    assert "pass drop-identity: accepted" in out and "removed=1" in out
    written = onnx.load(str(tmp_path / "demo.opt.onnx"))
    assert "Identity" not in {node.op_type for node in written.graph.node}
    assert len(written.graph.node) == len(onnx.load(str(DEMO)).graph.node) - 1
    (entry,) = json.loads(report_path.read_text())["passes"]
    assert entry["name"] == "drop-identity" and entry["plugin"] == "example"
    assert entry["options"] == {"keep_outputs": True, "min_count": 0}
    assert entry["details"] == {"removed": 1}
    assert entry["status"] == "accepted" and entry["verification"]["ok"] is True


def test_runs_from_the_api_and_is_idempotent():
    result = graphopt.optimize(str(DEMO), passes=["drop-identity"], options={"drop-identity": {"min_count": 1}})
    (entry,) = result.report["passes"]
    assert entry["plugin"] == "example" and entry["details"] == {"removed": 1} and entry["changed"] is True
    assert "Identity" not in {node.op_type for node in result.model.graph.node}
    again = graphopt.optimize(result.model, passes=["drop-identity"])
    assert again.report["passes"][0]["changed"] is False and again.report["passes"][0]["details"] == {"removed": 0}


def test_options_parse_from_set_with_their_types(capsys, demo, tmp_path):
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(capsys, "optimize", demo, "--passes", "drop-identity,scale-weights",
                           "--set", "drop-identity.keep_outputs=false", "--set", "drop-identity.min_count=0x5",
                           "--set", "scale-weights.factor=1e0", "--set", "scale-weights.budget=sqnr=20",
                           "--report", report_path, "--quiet")
    assert code == 0, err
    drop, scale = json.loads(report_path.read_text())["passes"]
    assert drop["options"] == {"keep_outputs": False, "min_count": 5}
    assert drop["status"] == "unchanged"  # one Identity only, fewer than min_count
    assert scale["options"] == {"factor": 1.0, "budget": "sqnr=20"}
    assert scale["status"] == "unchanged"  # factor 1 changes nothing


@pytest.mark.parametrize(
    "assignment",
    ["drop-identity.min_count=many", "drop-identity.min_count=1.5", "drop-identity.keep_outputs=perhaps",
     "scale-weights.factor=big", "drop-identity.no_such_option=1"],
)
def test_option_of_wrong_type_is_a_usage_error(capsys, demo, assignment):
    before = folder_listing(demo.parent)
    code, _, err = run_cli(capsys, "optimize", demo, "--passes", "drop-identity,scale-weights", "--set", assignment)
    assert code == 2
    one_line_error(err, assignment.partition("=")[0])
    assert folder_listing(demo.parent) == before


def test_keep_outputs_false_removes_an_identity_that_feeds_an_output(tmp_path):
    model = biased_model()
    model.graph.node[1].output[0] = "pre_y"
    model.graph.node.append(helper.make_node("Identity", ["pre_y"], ["y"], name="out_identity"))
    kept = graphopt.optimize(model, passes=["drop-identity"])
    assert kept.report["passes"][0]["details"] == {"removed": 0}
    dropped = graphopt.optimize(model, passes=["drop-identity"], options={"drop-identity": {"keep_outputs": False}})
    assert dropped.report["passes"][0]["details"] == {"removed": 1}
    assert [o.name for o in dropped.model.graph.output] == ["y"]
    assert [n.op_type for n in dropped.model.graph.node] == ["MatMul", "Add"]


# --- a pass that raises -------------------------------------------------------------------


def test_a_pass_that_raises_exits_3_naming_it(capsys, demo, tmp_path):
    before = folder_listing(tmp_path)
    code, out, err = run_cli(capsys, "optimize", demo, "--passes", "cleanup,explode")
    assert code == 3
    line = one_line_error(err, "'explode'", "RuntimeError", "boom")
    assert "internal error" not in line
    assert out == ""
    assert folder_listing(tmp_path) == before


def test_a_pass_that_raises_with_keep_going(capsys, demo, tmp_path):
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(capsys, "optimize", demo, "--passes", "explode,drop-identity", "--keep-going",
                           "--report", report_path, "--quiet")
    assert code == 0, err
    explode, drop = json.loads(report_path.read_text())["passes"]
    assert explode["name"] == "explode" and explode["status"] == "failed"
    assert "boom" in explode["error"] and explode["changed"] is False
    assert drop["status"] == "accepted" and drop["details"] == {"removed": 1}
    assert (tmp_path / "demo.opt.onnx").is_file()


def test_a_multi_line_exception_is_still_one_line(capsys, demo, monkeypatch):
    import graphopt_example_plugin

    def run(self, graph, ctx):
        raise ValueError("shapes do not match:\n  (1, 3)\n  (1, 4)")

    monkeypatch.setattr(graphopt_example_plugin.Explode, "run", run)
    code, _, err = run_cli(capsys, "optimize", demo, "--passes", "explode")
    assert code == 3
    one_line_error(err, "'explode'", "shapes do not match: (1, 3) (1, 4)")


def test_a_pass_that_raises_through_the_api():
    with pytest.raises(graphopt.PassError, match="'explode' raised RuntimeError: boom") as caught:
        graphopt.optimize(str(DEMO), passes=["explode"])
    assert caught.value.pass_name == "explode" and caught.value.exit_code == 3
    assert isinstance(caught.value.__cause__, RuntimeError)


# --- lossy pass and its budget ------------------------------------------------------------


def test_lossy_pass_within_its_budget(capsys, biased, tmp_path):
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(capsys, "optimize", biased, "--passes", "scale-weights", "--set", "scale-weights.factor=1.001",
                           "--report", report_path, "--quiet")
    assert code == 0, err
    report = json.loads(report_path.read_text())
    (entry,) = report["passes"]
    assert entry["status"] == "accepted" and entry["lossless"] is False
    assert entry["details"] == {"scaled": 1, "tensor": "W"}
    assert entry["verification"]["mode"] == "budget" and entry["verification"]["outputs"]["y"]["cosine"] > 0.999
    assert report["verification"]["end_to_end"]["ok"] is True
    written = onnx.load(str(tmp_path / "biased.opt.onnx"))
    weight = numpy_helper.to_array(next(t for t in written.graph.initializer if t.name == "W"))
    original = numpy_helper.to_array(biased_model().graph.initializer[0])
    np.testing.assert_allclose(weight, original * np.float32(1.001), rtol=1e-6)


def test_lossy_pass_over_its_budget_fails_verification(capsys, biased, tmp_path):
    before = folder_listing(tmp_path)
    code, out, err = run_cli(capsys, "optimize", biased, "--passes", "scale-weights", "--set", "scale-weights.factor=2.0")
    assert code == 1
    one_line_error(err, "'scale-weights'", "failed verification", "output 'y'", "cosine", "< 0.999")
    assert out == ""
    assert folder_listing(tmp_path) == before


def test_lossy_pass_over_its_budget_is_rolled_back_with_keep_going(capsys, biased, tmp_path):
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(capsys, "optimize", biased, "--passes", "scale-weights,drop-identity",
                           "--set", "scale-weights.factor=2.0", "--keep-going", "--report", report_path)
    assert code == 0, err
    assert "scale-weights" in err and "rolled back" in err  # a warning, not an error
    scale, _ = json.loads(report_path.read_text())["passes"]
    assert scale["status"] == "rolled_back" and scale["rolled_back"] is True
    assert scale["verification"]["ok"] is False
    assert scale["nodes_after"] == scale["nodes_before"]
    written = onnx.load(str(tmp_path / "biased.opt.onnx"))
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in written.graph.initializer} == {
        t.name: numpy_helper.to_array(t).tobytes() for t in biased_model().graph.initializer}


def test_a_pass_budget_option_is_what_it_is_held_to(capsys, biased, tmp_path):
    code, _, err = run_cli(capsys, "optimize", biased, "--passes", "scale-weights", "--set", "scale-weights.factor=2.0",
                           "--set", "scale-weights.budget=cos=0.5", "--budget", "cos=0.5", "--quiet")
    assert code == 0, err


# --- broken, clashing and misspelled plugins ----------------------------------------------


def test_a_plugin_that_fails_to_import_is_named_and_the_rest_still_work(tmp_path):
    (tmp_path / "broken_plugin.py").write_text('raise ImportError("broken_plugin needs a module that is not there")\n')
    dist_info = tmp_path / "broken_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken_plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[graphopt]\nbroken_plugin = broken_plugin\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([graphopt_script(), "passes"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    (warning,) = [line for line in done.stderr.splitlines() if "broken_plugin" in line]
    assert "WARNING" in warning and "ImportError" in warning and "not there" in warning
    names = {line.split()[0] for line in done.stdout.splitlines() if line and not line.startswith(" ")}
    assert {"cleanup", *EXAMPLE_PASSES} <= names

    done = subprocess.run([graphopt_script(), "passes", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert any("broken_plugin" in warning for warning in json.loads(done.stdout)["warnings"])


class _DuplicateCleanup(graphopt.Pass):
    """Claims the name of the first-party cleanup pass."""

    name = "cleanup"

    def run(self, graph, ctx):
        return graphopt.PassResult(changed=False)


def test_a_duplicate_pass_name_is_an_error_naming_both_plugins():
    @graphopt.hookimpl
    def graphopt_register_passes(registry):
        registry.add(_DuplicateCleanup)

    module = make_plugin_module("dup_plugin", graphopt_register_passes=graphopt_register_passes)
    loaded = load_registry(extra_plugins=[module])
    (warning,) = [w for w in loaded.warnings if "dup_plugin" in w]
    assert "'cleanup'" in warning and "plugin 'cleanup'" in warning and "plugin 'dup_plugin'" in warning
    assert loaded.registry.plugin_of("cleanup") == "cleanup"  # the first registration stands
    assert loaded.registry.get("cleanup") is not _DuplicateCleanup


def test_a_misspelled_hook_is_reported():
    @graphopt.hookimpl
    def graphopt_register_pases(registry):  # sic
        registry.add(_DuplicateCleanup)

    module = make_plugin_module("typo_plugin", graphopt_register_pases=graphopt_register_pases)
    loaded = load_registry(extra_plugins=[module])
    (warning,) = [w for w in loaded.warnings if "typo_plugin" in w]
    assert "graphopt_register_pases" in warning and "misspelled" in warning
    assert "typo_plugin" not in {loaded.registry.plugin_of(name) for name in loaded.registry.names()}
    assert not loaded.manager.is_registered(module)


# --- declared ordering ----------------------------------------------------------------------


class _AfterCleanup(graphopt.Pass):
    """Does nothing, but must run after cleanup."""

    name = "after-cleanup"
    after = ("cleanup",)

    @dataclasses.dataclass
    class Options:
        strict: bool = False  # an option, to prove options still parse

    def run(self, graph, ctx):
        return graphopt.PassResult(changed=False, stats={"ran": 1})


@graphopt.hookimpl
def _register_after_cleanup(registry):
    registry.add(_AfterCleanup)


def _ordering_plugin() -> types.ModuleType:
    return make_plugin_module("ordering_plugin", graphopt_register_passes=_register_after_cleanup)


def test_declared_ordering_violated_is_a_usage_error():
    with pytest.raises(graphopt.UsageError, match="'after-cleanup' must run after 'cleanup'") as caught:
        graphopt.optimize(str(DEMO), passes=["after-cleanup", "cleanup"], plugins=[_ordering_plugin()])
    assert caught.value.exit_code == 2


def test_declared_ordering_respected_runs():
    result = graphopt.optimize(str(DEMO), passes=["cleanup", "after-cleanup"], plugins=[_ordering_plugin()],
                               options={"after-cleanup": {"strict": True}})
    cleanup, after = result.report["passes"]
    assert after["plugin"] == "ordering_plugin" and after["details"] == {"ran": 1}
    assert after["options"] == {"strict": True}


def test_a_lossy_pass_within_its_own_budget_that_breaks_the_end_to_end_budget_goes_back():
    # y = x * w with w = 1. Each scale-weights run multiplies w by 1.4: the second run moves the
    # output by 0.56 from the stage before (within its own abs=0.6) but by 0.96 from the
    # original, past the global abs=0.8. It must be rolled back, and the run must succeed.
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1] x) => (float[1] y) <float[1] w = {1.0}> { y = Mul(x, w) }""")
    inputs = {"x": np.ones((1, 1), np.float32)}
    result = graphopt.optimize(model, passes=["scale-weights", "scale-weights"], inputs=inputs, budget="abs=0.8",
                               keep_going=True, options={"scale-weights": {"factor": 1.4, "budget": "abs=0.6"}})
    first, second = result.report["passes"]
    assert first["status"] == "accepted" and first["verification"]["end_to_end_so_far"]["ok"]
    assert second["status"] == "rolled_back"
    assert second["verification"]["ok"] is False
    assert result.report["verification"]["end_to_end"]["ok"]
    np.testing.assert_allclose(onnx.numpy_helper.to_array(result.model.graph.initializer[0]), [1.4], rtol=1e-6)
