"""docs/cli.md documents every option of every command the parser knows."""

import argparse
from pathlib import Path

from graphopt.cli import _build_parser

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()


def _commands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_and_option_is_documented():
    missing = []
    for name, command in _commands(_build_parser()).items():
        if f"graphopt {name}" not in DOC:
            missing.append(f"graphopt {name}")
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                if not any(option in DOC for option in action.option_strings):
                    missing.append(f"{name} {'/'.join(action.option_strings)}")
    assert not missing, f"undocumented in docs/cli.md: {missing}"
