"""examples/06_latency_on_device: the adb latency plugin, against a fake `adb` on PATH that plays a phone."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import torch_models

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "06_latency_on_device"

# A phone where int8 is twice as fast as float: 2 ms per float Conv/Gemm, 1 ms when the model is quantized.
FAKE_ADB = textwrap.dedent('''\
    #!{python}
    import os, re, shutil, sys
    from pathlib import Path
    root = Path(os.environ["FAKE_DEVICE"])
    args = sys.argv[1:]
    with open(root / "adb.log", "a") as log:
        log.write(" ".join(args) + "\\n")
    def local(remote):
        return root / remote.lstrip("/")
    if args[0] == "push":
        source, target = Path(args[1]), local(args[2])
        if source.is_dir():
            shutil.copytree(source, target / source.name, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    elif args[0] == "shell" and "onnxruntime_perf_test" in args[1]:
        words = args[1].split()
        model_path = local(words[-1])
        assert (model_path.parent / "test_data_set_0" / "input_0.pb").is_file(), "no input sample pushed"
        text = model_path.read_bytes()  # op types are plain strings in the protobuf
        quantized = b"QuantizeLinear" in text
        compute = sum(text.count(bytes([0x22, len(op)]) + op) for op in (b"Conv", b"Gemm", b"MatMul"))
        seconds = (0.001 if quantized else 0.002) * compute
        print("Total inference requests: 10")
        print(f"Average inference time cost: {{seconds * 1e3:.4f}} ms")
        print(f"P50 Latency: {{seconds:.6f}} s")
    elif args[0] == "shell":
        for made in re.findall(r"mkdir -p (\\S+)", args[1]):
            local(made.strip("'")).mkdir(parents=True, exist_ok=True)
    else:
        sys.exit(f"fake adb: unsupported {{args}}")
''')


def _fake_phone(tmp_path: Path) -> dict:
    bin_dir, device = tmp_path / "bin", tmp_path / "device"
    bin_dir.mkdir()
    device.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FAKE_DEVICE"] = str(device)
    return env


def test_quantize_keeps_int8_where_the_phone_is_faster_though_this_host_is_not(tmp_path):
    env = _fake_phone(tmp_path)
    source = tmp_path / "cnn.onnx"
    onnx.save(torch_models.cnn("torchscript", 17), source)
    completed = subprocess.run([sys.executable, str(EXAMPLE / "time_on_phone.py"), str(source), str(tmp_path / "out.onnx"),
                                "adb-ort"], capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "latency backend: adb-ort" in completed.stdout
    assert "quantized 7 layers, kept float 0" in completed.stdout, completed.stdout
    log = (tmp_path / "device" / "adb.log").read_text()
    assert "-e cpu -m times" in log and "-x 1 " in log
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)


def test_a_phone_that_is_not_there_is_a_plugin_failure_naming_the_backend(tmp_path):
    env = _fake_phone(tmp_path)
    (tmp_path / "bin" / "adb").write_text("#!/bin/sh\necho 'error: no devices/emulators found' >&2\nexit 1\n")
    source = tmp_path / "cnn.onnx"
    onnx.save(torch_models.cnn("torchscript", 17), source)
    completed = subprocess.run([sys.executable, str(EXAMPLE / "time_on_phone.py"), str(source), str(tmp_path / "out.onnx")],
                               capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode != 0
    assert "latency backend 'adb-ort' failed" in completed.stderr and "no devices" in completed.stderr
    assert not (tmp_path / "out.onnx").exists()
