"""What this machine's onnxruntime int8 kernels can hold: does u8 x s8 saturate?

On x86 without VNNI, onnxruntime's int8 GEMM (MLAS) multiplies 8-bit activations by 8-bit
weights with `vpmaddubsw`, which adds each pair of products into a *saturating* int16: two
products of 255 x 127 already overflow it. With uint8 activations around a zero point of
~128 and full-range int8 weights this happens on most dot products, and the error it adds is
far larger than the rounding error (measured: 21 dB output SQNR instead of 40 on a random
384x384 MatMul). Weights held to 7 bits ([-63, 63]) can never overflow the pair sum; on VNNI
(`vpdpbusd`, 32-bit accumulation) and ARM the full range is exact, and reducing it would only
cost precision. So we ask the kernel rather than the CPU flags: one tiny MatMulInteger whose
exact answer overflows int16 pairs, run as users will run it.
"""

from __future__ import annotations

import functools

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from graphopt.verify.runner import make_session

__all__ = ["FULL_RANGE", "REDUCED_RANGE", "int8_pairs_saturate", "weight_qmax"]

FULL_RANGE = 127
REDUCED_RANGE = 63  # 2 x 255 x 63 < 32767: a pair of products always fits a saturating int16


@functools.cache  # a fact about this process's onnxruntime and CPU: probed once, not per pass run
def int8_pairs_saturate(signed_activations: bool) -> bool:
    """True when onnxruntime's int8 GEMM here loses products to int16 saturation."""
    rows, depth, columns = 4, 64, 16  # big enough for the packed GEMM path, not a special case
    a_type = np.int8 if signed_activations else np.uint8
    a = np.full((rows, depth), np.iinfo(a_type).max, a_type)
    b = np.full((depth, columns), 127, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
        [helper.make_tensor_value_info("a", TensorProto.INT8 if signed_activations else TensorProto.UINT8, [rows, depth])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, columns])], [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    got = make_session(model, optimize=True, threads=1).run(None, {"a": a})[0]
    exact = a.astype(np.int64) @ b.astype(np.int64)
    return not np.array_equal(got, exact)


def weight_qmax(setting: str, signed_activations: bool) -> int:
    """The int8 weight range for `reduce_range` = auto (ask the kernel), on or off."""
    if setting == "auto":
        return REDUCED_RANGE if int8_pairs_saturate(signed_activations) else FULL_RANGE
    return REDUCED_RANGE if setting == "on" else FULL_RANGE

