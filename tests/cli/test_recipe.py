"""Recipes: flags win over recipe keys; malformed recipe values are input errors (exit 2)."""

import shutil
from pathlib import Path

import pytest

from graphopt.cli import main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "demo.onnx"


@pytest.fixture
def model(tmp_path):
    return str(shutil.copy(DEMO, tmp_path / "demo.onnx"))


@pytest.mark.parametrize("flags", [["--passes", "cleanup"], ["--budget", "sqnr=30"], ["--verify", "end"], []])
def test_flags_override_a_full_recipe(tmp_path, model, flags):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('passes = ["cleanup"]\nbudget = "cos=0.99"\nverify = "each"\n[cleanup]\ncse = false\n')
    assert main(["optimize", model, "--recipe", str(recipe), "--quiet", *flags]) == 0
    assert (tmp_path / "demo.opt.onnx").exists()


@pytest.mark.parametrize("text, message", [
    ("passes = 3\n", "recipe 'passes' must be a list"),
    ('budget = 0.9\n', "recipe 'budget' must be a string"),
    ('passes = ["cleanup"]\n[cleanup]\ncse = "sometimes"\n', "cleanup.cse expects true or false"),
    ("passes = [\n", "recipe is not valid TOML"),
])
def test_malformed_recipes_exit_2_with_one_line(tmp_path, model, capsys, text, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    assert main(["optimize", model, "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("graphopt: error:") and message in err
    assert not (tmp_path / "demo.opt.onnx").exists()
