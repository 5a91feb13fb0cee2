"""The progress bar shows on a terminal and stays out of pipes and --quiet."""

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "demo.onnx"
GRAPHOPT = shutil.which("graphopt") or str(Path(sys.executable).with_name("graphopt"))


def _stderr_on_a_terminal(args: list[str]) -> bytes:
    master, slave = pty.openpty()
    # A real terminal has a size; without one tqdm draws a zero-width bar.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process = subprocess.run([GRAPHOPT, *args], stdin=slave, stdout=subprocess.DEVNULL, stderr=slave, timeout=120)
    time.sleep(0.2)
    os.close(slave)
    reader.join(timeout=5)
    os.close(master)
    assert process.returncode == 0
    return b"".join(chunks)


@pytest.fixture
def args(tmp_path):
    return ["optimize", str(DEMO), "-o", str(tmp_path / "out.onnx"), "--passes", "cleanup,cleanup"]


def test_bar_on_a_terminal(args):
    assert b"passes:" in _stderr_on_a_terminal(args)


def test_no_bar_with_quiet_on_a_terminal(args):
    assert b"passes:" not in _stderr_on_a_terminal(args + ["--quiet"])


def test_no_bar_in_a_pipe(args):
    process = subprocess.run([GRAPHOPT, *args], capture_output=True, timeout=120)
    assert process.returncode == 0
    assert b"passes:" not in process.stderr and process.stderr == b""
