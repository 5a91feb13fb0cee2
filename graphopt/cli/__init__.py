"""The `graphopt` command line: optimize, passes, inspect, verify, bench — one module each
(and partition, run, from `graphopt.cli.partition`).

Errors are one line on stderr, `graphopt: error: <what> (<file>)`, with the exit codes of
docs/design.md (0 done, 1 verification failed, 2 bad usage or input, 3 a pass or plugin
failed); `--debug` adds the traceback. Only this package prints. A new command is a module
with `register(commands, common)` and `run(args)`, and one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback

from graphopt import __version__
from graphopt.cli import bench, inspect, optimize, passes, verify
from graphopt.errors import GraphoptError, UsageError
from graphopt.parameter_names import cli_spelling
from graphopt.cli.partition import add_commands as add_partition_commands

__all__ = ["main", "COMMANDS"]

logger = logging.getLogger("graphopt")

COMMANDS = [optimize, passes, inspect, verify, bench]


class _Parser(argparse.ArgumentParser):
    """argparse, but its usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str):
        raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        with _logging_for(args), cli_spelling():
            return args.handler(args)
    except GraphoptError as error:
        return _fail(error, error.exit_code, debug)
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`graphopt passes | head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # a bug of ours: still one line, still a documented code
        return _fail(f"internal error: {type(error).__name__}: {error}", 3, debug)


def _fail(error, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    # One line, whatever the message: a plugin's exception text may span several.
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    print(f"graphopt: error: {text}", file=sys.stderr)
    return code


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="log debug detail and print tracebacks")
    common.add_argument("--quiet", action="store_true", help="print only errors; no progress bar")
    parser = _Parser(prog="graphopt", description="Plugin-based graph optimization compiler for ONNX.")
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.register(commands, common)
    add_partition_commands(commands, common)  # partition, run, and optimize --partition K
    return parser


@contextlib.contextmanager
def _logging_for(args):
    """Our loggers print to stderr at the level the flags ask for, for this command only: `main()`
    called in-process (embedding, tests) leaves the host's logging as it found it."""
    level = logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("graphopt: %(levelname)s: %(message)s"))
    # First-party plugins log under graphopt_plugins.* (their module names); show them alike.
    loggers = [logging.getLogger(name) for name in ("graphopt", "graphopt_plugins")]
    saved = [(list(each.handlers), each.level, each.propagate) for each in loggers]
    for each in loggers:
        each.handlers[:] = [handler]
        each.setLevel(level)
        each.propagate = False
    try:
        yield
    finally:
        for each, (handlers, previous_level, propagate) in zip(loggers, saved):
            each.handlers[:] = handlers
            each.setLevel(previous_level)
            each.propagate = propagate
