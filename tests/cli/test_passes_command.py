"""`graphopt passes`: filtering by plugin, and a reader that stops early."""

import subprocess
import sys

from graphopt.cli import main


def test_plugin_filter_lists_only_that_plugins_passes(capsys):
    assert main(["passes", "--plugin", "cleanup"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert names == ["cleanup"]


def test_an_unknown_plugin_is_bad_usage(capsys):
    assert main(["passes", "--plugin", "no-such-plugin"]) == 2
    assert "no installed plugin named no-such-plugin" in capsys.readouterr().err


def test_a_closed_pipe_is_not_an_error():
    # `graphopt passes --markdown | head -1`: the reader leaves after one line.
    process = subprocess.Popen([sys.executable, "-m", "graphopt", "passes", "--markdown"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0
    assert "error" not in stderr.lower()


def test_main_leaves_the_hosts_logging_as_it_found_it(capsys):
    import logging

    loggers = [logging.getLogger(name) for name in ("graphopt", "graphopt_plugins")]
    before = [(list(each.handlers), each.level, each.propagate) for each in loggers]
    assert main(["passes", "--quiet"]) == 0
    assert [(list(each.handlers), each.level, each.propagate) for each in loggers] == before
