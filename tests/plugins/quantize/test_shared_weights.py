"""A weight read by many layers (an unrolled recurrence) is quantized once, and the model shrinks."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from quantize_support import op_counts, quantize, run

from graphopt.verify.metrics import output_metrics

STEPS, WIDTH = 6, 128


def unrolled_recurrence(steps: int = STEPS, width: int = WIDTH, seed: int = 0) -> onnx.ModelProto:
    """h_t = tanh(x_t W_ih + h_{t-1} W_hh + b): one W_ih and one W_hh read at every step, as an
    exporter unrolls an LSTM/RNN; x is (batch, steps, width) with a dynamic batch."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), name)
             for name in ("w_ih", "w_hh")]
    inits += [numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, "b")]
    inits += [numpy_helper.from_array(np.array(t, np.int64), f"t{t}") for t in range(steps)]
    nodes, h = [], None
    for t in range(steps):
        nodes.append(helper.make_node("Gather", ["x", f"t{t}"], [f"x{t}"], axis=1, name=f"step{t}"))
        nodes.append(helper.make_node("Gemm", [f"x{t}", "w_ih", "b"], [f"i{t}"], name=f"ih{t}"))
        pre = f"i{t}"
        if h is not None:
            nodes.append(helper.make_node("MatMul", [h, "w_hh"], [f"r{t}"], name=f"hh{t}"))
            nodes.append(helper.make_node("Add", [f"i{t}", f"r{t}"], [f"a{t}"], name=f"add{t}"))
            pre = f"a{t}"
        h = "y" if t == steps - 1 else f"h{t}"
        nodes.append(helper.make_node("Tanh", [pre], [h], name=f"tanh{t}"))
    graph = helper.make_graph(nodes, "unrolled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", steps, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _samples(count: int, seed: int, batch: int = 4) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((count, batch, STEPS, WIDTH)).astype(np.float32)}


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def test_a_shared_weight_is_quantized_once_and_the_model_shrinks():
    model = unrolled_recurrence()
    calibration = _samples(8, seed=1)
    for mode in ("static", "dynamic", "weight-only"):
        quantized, stats, entry = quantize(model, calibration, mode=mode, latency="off", verify="each")
        assert entry["status"] == "accepted", (mode, entry)
        assert stats["quantized"] == 2 * STEPS - 1, (mode, stats)
        int8 = [t for t in quantized.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
        assert len(int8) == 2, (mode, [t.name for t in int8])  # one int8 copy of W_ih, one of W_hh
        assert not any(t.name in ("w_ih", "w_hh") for t in quantized.graph.initializer), mode  # no float copy left
        assert _weight_bytes(quantized) < 0.4 * _weight_bytes(model), mode
        assert quantized.ByteSize() < model.ByteSize(), mode
        assert stats["weight_bytes_after"] < stats["weight_bytes_before"] and not stats.get("warnings"), (mode, stats)
        if mode == "static":
            assert op_counts(quantized)["DequantizeLinear"] - 2 * (2 * STEPS - 1) < 2 * STEPS + 2  # weights: 2 DQs, not 11
        held_out = _samples(2, seed=9)
        for index in range(2):
            feeds = {"x": held_out["x"][index]}
            for optimize in (False, True):
                (expected,), (actual,) = run(model, feeds), run(quantized, feeds, optimize)
                assert output_metrics(expected, actual)["cosine"] >= 0.99, (mode, optimize, index)


def test_readers_of_one_weight_are_decided_together():
    # Budget so tight that some layers must stay float: a weight is then float for all its readers
    # or int8 for all of them, never both (that would store it twice).
    model = unrolled_recurrence()
    quantized, stats, entry = quantize(model, _samples(8, seed=1), mode="static", latency="off", budget="cos=0.9999")
    decisions = {}
    for row in stats["layers"]:
        decisions.setdefault(row["node"][:2], set()).add(row["decision"])
    assert all(len(kinds) == 1 for kinds in decisions.values()), decisions
    matrices = [t for t in quantized.graph.initializer if len(t.dims) == 2 and min(t.dims) > 1]  # not (1, N) scales
    floats = {t.name for t in matrices if t.data_type == TensorProto.FLOAT}
    int8 = {t.name for t in matrices if t.data_type == TensorProto.INT8}
    assert len(floats) + len(int8) == 2, (floats, int8)
    assert _weight_bytes(quantized) <= _weight_bytes(model)
