"""graphopt/bench.py: interleaved timing with a ratio to the first model."""

import numpy as np
import onnx.parser

from graphopt.bench import compare_latency, measure_latency


def _model(op: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[64,64] x) => (float[64,64] y) {{ y = {op}(x) }}""")


def test_compare_latency_times_every_model_and_relates_them_to_the_first():
    feeds = {"x": np.ones((64, 64), np.float32)}
    timings = compare_latency({"relu": _model("Relu"), "sigmoid": _model("Sigmoid")}, feeds, runs=7, warmup=1)
    assert list(timings) == ["relu", "sigmoid"]
    assert timings["relu"]["ratio"] == 1.0
    for timing in timings.values():
        assert timing["runs"] == 7 and timing["threads"] == 1
        assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["p90_ms"]
    assert np.isclose(timings["sigmoid"]["ratio"], timings["sigmoid"]["median_ms"] / timings["relu"]["median_ms"])


def test_per_model_feeds_and_the_single_model_form():
    feeds = {"a": {"x": np.ones((64, 64), np.float32)}, "b": {"x": np.zeros((64, 64), np.float32)}}
    timings = compare_latency({"a": _model("Relu"), "b": _model("Relu")}, feeds, runs=3, warmup=0)
    assert set(timings) == {"a", "b"}
    single = measure_latency(_model("Relu"), feeds["a"], runs=3, warmup=0)
    assert single["runs"] == 3 and "ratio" not in single
