"""Per-tensor int8 constants for LiteRT's BATCH_MATMUL, set in onnx2tf's flatbuffer.

onnx2tf 2.6.9's int8 writer quantizes a MatMul's constant operand per channel, along its first
axis, as it does a convolution's filter. LiteRT's int8 BATCH_MATMUL takes one scale per operand
(the tensor's legacy `params.scale`, which is 0 for a per-channel tensor), so its output
multiplier is 0 and every output is the zero point: PP-OCRv4 rec's CTC head (a rank-3 activation
times a (120, 6625) weight, which onnx2tf writes as BATCH_MATMUL with `adj_x`) computed all zeros
in int8, cosine 0.0. And a scale per row of the operand that is summed over (the first axis of a
right-hand weight) is not a per-channel quantization of the product at all.

Here each such constant is requantized per tensor: its values as onnx2tf stored them
(`q * scale[channel]`), one symmetric scale from their largest magnitude, zero point 0. Only
constant int8 operands of BATCH_MATMUL with more than one scale are touched; a constant another
op also reads is left as it was.
"""

from __future__ import annotations

import numpy as np

__all__ = ["per_tensor_matmul_constants"]


def per_tensor_matmul_constants(flatbuffer: bytes) -> tuple[bytes, int]:
    """The flatbuffer with each per-channel constant int8 operand of BATCH_MATMUL requantized per tensor; how many."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    matmul = {index for index, code in enumerate(model.operatorCodes)
              if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.BATCH_MATMUL}
    changed = 0
    for subgraph in model.subgraphs:
        readers: dict[int, int] = {}
        for op in subgraph.operators:
            for index in op.inputs if op.inputs is not None else ():
                readers[index] = readers.get(index, 0) + 1
        for op in subgraph.operators:
            if op.opcodeIndex not in matmul or op.inputs is None:
                continue
            for index in op.inputs[:2]:
                tensor = subgraph.tensors[index]
                if readers.get(index) == 1 and _per_tensor(tensor, model.buffers, schema):
                    changed += 1
    if not changed:
        return flatbuffer, 0
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), changed


def _per_tensor(tensor, buffers, schema) -> bool:
    """Requantizes `tensor` per tensor in place when it is a per-channel int8 constant; whether it did."""
    q = tensor.quantization
    data = buffers[tensor.buffer].data if tensor.buffer else None
    if tensor.type != schema.TensorType.INT8 or data is None or q is None or q.scale is None or len(q.scale) < 2:
        return False
    shape = [int(d) for d in tensor.shape]
    values = np.asarray(data, np.uint8).view(np.int8).reshape(shape).astype(np.float64)
    scales = np.asarray(q.scale, np.float64)
    zeros = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(len(scales)), np.float64)
    axis = int(q.quantizedDimension)
    if shape[axis] != len(scales):
        return False
    broadcast = [1] * len(shape)
    broadcast[axis] = len(scales)
    real = (values - zeros.reshape(broadcast)) * scales.reshape(broadcast)
    scale = float(np.max(np.abs(real))) / 127.0 or 1.0
    buffers[tensor.buffer].data = np.clip(np.round(real / scale), -127, 127).astype(np.int8).ravel().view(np.uint8)
    q.scale, q.zeroPoint, q.quantizedDimension = [scale], [0], 0
    return True
