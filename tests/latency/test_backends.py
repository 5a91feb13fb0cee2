"""graphopt/latency/backends.py: the backends, the plugin hook, and the decisions wired to them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch_models

import graphopt
from graphopt import latency
from graphopt.cli import main
from graphopt.errors import PluginError, UsageError
from graphopt.registry import load_registry


def _chain(op: str, count: int) -> onnx.ModelProto:
    nodes = "\n".join(f"t{i + 1} = {op}(t{i})" for i in range(count))
    return onnx.parser.parse_model(f'''<ir_version: 8, opset_import: ["" : 17]>
        g (float[64, 64] t0) => (float[64, 64] t{count}) {{ {nodes} }}''')


def _feed():
    return {"t0": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)}


def test_host_ort_times_every_model_interleaved_and_relates_it_to_the_first():
    timer = latency.backend("host-ort")
    timings = timer.compare({"short": _chain("Tanh", 1), "long": _chain("Tanh", 40)}, _feed(), seconds=0.05, rounds=2,
                            purpose="test")
    assert set(timings) == {"short", "long"} and timings["short"]["ratio"] == 1.0
    assert timings["long"]["median_ms"] > timings["short"]["median_ms"] > 0
    assert timings["long"]["backend"] == "host-ort"
    assert timer.report() == {"backend": "host-ort", "measures": True, "comparisons": {"test": 1}}


def test_a_plain_comparison_ends_after_two_rounds_and_a_close_one_takes_every_round():
    from graphopt.latency.host_ort import interleaved_cpu_medians

    asked = []

    def decided(answer):
        def ask(medians):
            asked.append(len(medians))
            return answer
        return ask

    models, feeds = [_chain("Tanh", 1), _chain("Tanh", 3)], [_feed(), _feed()]
    plain = interleaved_cpu_medians(models, feeds, seconds=0.02, rounds=5, decided=decided(True))
    assert asked == [2] and len(plain[0]) == len(plain[1]) and len(plain[0]) % 2 == 0  # asked once, after round 2
    asked.clear()
    close = interleaved_cpu_medians(models, feeds, seconds=0.02, rounds=5, decided=decided(False))
    assert asked == [2, 2, 2] and len(close[0]) % 5 == 0  # asked after rounds 2, 3 and 4; all 5 timed


def test_each_model_runs_once_untimed_and_every_other_run_is_a_timed_sample(monkeypatch):
    from graphopt.latency import host_ort

    runs = []

    class Counting:
        def __init__(self, session):
            self._session = session
            runs.append(0)
            self._index = len(runs) - 1

        def run(self, *args):
            runs[self._index] += 1
            return self._session.run(*args)

    make_session = host_ort.make_session
    monkeypatch.setattr(host_ort, "make_session", lambda *args, **kwargs: Counting(make_session(*args, **kwargs)))
    times = host_ort.interleaved_cpu_medians([_chain("Tanh", 1), _chain("Tanh", 3)], [_feed(), _feed()], seconds=0.02, rounds=3)
    # The warm-up alone is untimed: the run that sets the run count is round one's first sample.
    assert runs == [len(times[0]) + 1, len(times[1]) + 1] and len(times[0]) % 3 == 0


def test_none_times_nothing_and_says_so():
    timer = latency.backend("none")
    timings = timer.compare({"a": _chain("Tanh", 1)}, _feed())
    assert not timer.measures and timings["a"]["median_ms"] is None and timings["a"]["backend"] == "none"


def test_an_unknown_backend_is_a_usage_error_naming_the_known_ones():
    with pytest.raises(UsageError, match="unknown latency backend 'phone'.*host-ort, host-litert, none"):
        latency.backend("phone", load_registry(entry_points=False))


class _FakeDevice:
    """A device on which int8 is twice as fast as float (or half): 2 ms per float Conv/Gemm/MatMul, 1 ms quantized."""

    def __init__(self, int8_fast: bool = True):
        self.calls, self.int8_fast = [], int8_fast

    @graphopt.hookimpl
    def graphopt_latency_backends(self):
        return ["fake-phone"]

    @graphopt.hookimpl
    def graphopt_measure_latency(self, model_path, inputs, settings):
        if settings["backend"] != "fake-phone":
            return None
        model = onnx.load(model_path)
        self.calls.append((model_path, sorted(inputs), settings["threads"]))
        quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        compute = sum(node.op_type in ("Conv", "Gemm", "MatMul", "Tanh") for node in model.graph.node)
        return {"median_ms": (1.0 if quantized == self.int8_fast else 2.0) * compute}


def test_a_plugin_backend_is_offered_by_name_and_called_with_a_model_file_and_one_sample():
    device = _FakeDevice()
    timer = latency.backend("fake-phone", load_registry([device], entry_points=False))
    timings = timer.compare({"one": _chain("Tanh", 1), "three": _chain("Tanh", 3)}, _feed(), rounds=3)
    assert timings["one"]["median_ms"] == 2.0 and timings["three"]["ratio"] == 3.0
    assert len(device.calls) == 6 and all(call[1:] == (["t0"], 1) for call in device.calls)


def test_a_plugin_answering_nonsense_is_named():
    class Broken(_FakeDevice):
        @graphopt.hookimpl
        def graphopt_measure_latency(self, model_path, inputs, settings):
            return {"mean": 3}

    timer = latency.backend("fake-phone", load_registry([Broken()], entry_points=False))
    with pytest.raises(PluginError, match="latency backend 'fake-phone' returned"):
        timer.compare({"a": _chain("Tanh", 1)}, _feed())


def _cnn_calibration(samples: int = 8) -> dict[str, np.ndarray]:
    return {"image": np.stack([torch_models.cnn_feeds(seed=100 + s)["image"] for s in range(samples)])}


def test_latency_on_none_quantizes_every_conv_of_a_mobilenet_style_cnn_within_the_budget():
    model = torch_models.cnn("torchscript", 17)
    convs = sum(node.op_type == "Conv" for node in model.graph.node)
    result = graphopt.optimize(model, passes=["cleanup", "fuse", "quantize"], calibration=_cnn_calibration(),
                               latency_on="none", budget="cos=0.99")
    stats = result.report["passes"][-1]["details"]
    layers = [row for row in stats["layers"] if row["op"] == "Conv"]
    assert len(layers) == convs and all(row["decision"] == "quantized" for row in layers), layers
    assert stats["latency_backend"] is None and stats["cosine"] >= 0.99
    assert result.report["latency"] == {"backend": "none", "measures": False, "comparisons": {}}
    assert result.report["verification"]["end_to_end"]["ok"]
    before, after = result.report["input"], result.report["output"]
    assert after["macs_by_dtype"]["int8"] > 0 and after["energy_proxy"]["total_pj"] < before["energy_proxy"]["total_pj"]


@pytest.mark.parametrize("int8_fast", [True, False])
def test_quantize_decides_by_the_plugin_device_not_by_this_host(int8_fast):
    device = _FakeDevice(int8_fast)
    result = graphopt.optimize(torch_models.cnn("torchscript", 17), passes=["cleanup", "fuse", "quantize"],
                               calibration=_cnn_calibration(), latency_on="fake-phone", plugins=[device])
    stats = result.report["passes"][-1]["details"]
    assert stats["latency_backend"] == "fake-phone"
    assert result.report["latency"]["backend"] == "fake-phone"
    assert result.report["latency"]["comparisons"]["quantize: layer"] == len(stats["layers"])
    if int8_fast:
        assert stats["kept_float"] == 0 and stats["latency"]["speedup"] > 1.9
    else:
        assert stats["quantized"] == 0 and all("slower on fake-phone" in row["why"] for row in stats["layers"])


def test_the_cli_takes_latency_on_and_refuses_an_unknown_backend(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    onnx.save(_chain("Relu", 2), source)
    assert main(["optimize", str(source), "--latency-on", "none", "--report", str(tmp_path / "r.json")]) == 0
    assert '"backend": "none"' in (tmp_path / "r.json").read_text()
    assert main(["optimize", str(source), "--latency-on", "warp-drive"]) == 2
    assert "unknown latency backend 'warp-drive'" in capsys.readouterr().err
