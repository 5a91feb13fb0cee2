"""float16 weights in a LiteRT flatbuffer, dequantized to float32 where they are read.

TFLite's own "float16 quantization": every float32 constant is stored as float16 and a
DEQUANTIZE op in front of the graph turns it back into the float32 tensor it was, so every
kernel still computes in float32 (or, on ARM with XNNPACK, in float16 where it chooses to). The
file halves; any LiteRT build runs it. onnx2tf's own float16 flatbuffer computes in float16
throughout, which LiteRT's x86 CPU kernels refuse for several ops (MAX_POOL_2D, TRANSPOSE_CONV).
"""

from __future__ import annotations

import numpy as np

__all__ = ["with_float16_weights"]


def with_float16_weights(flatbuffer: bytes) -> bytes:
    """The flatbuffer with each float32 constant stored as float16 behind a DEQUANTIZE."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    dequantize = _opcode(model, schema.BuiltinOperator.DEQUANTIZE, schema)
    empty = _empty_buffer(model, schema)
    for subgraph in model.subgraphs:
        constants = sorted({index for op in subgraph.operators for index in (op.inputs if op.inputs is not None else ())
                            if index >= 0 and _is_float_constant(model, subgraph.tensors[index], schema)})
        added = []
        for index in constants:
            tensor = subgraph.tensors[index]
            values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=np.float32)
            halved = schema.BufferT()
            halved.data = np.clip(values, -65504, 65504).astype(np.float16).view(np.uint8)
            model.buffers.append(halved)
            stored = schema.TensorT()
            stored.shape, stored.type, stored.buffer = tensor.shape, schema.TensorType.FLOAT16, len(model.buffers) - 1
            stored.name = (tensor.name or b"") + b"_fp16" if isinstance(tensor.name, bytes) else f"{tensor.name}_fp16"
            subgraph.tensors.append(stored)
            old, tensor.buffer = tensor.buffer, empty  # now computed, by the DEQUANTIZE below
            if not any(other.buffer == old for graph in model.subgraphs for other in graph.tensors):
                model.buffers[old].data = None  # its float32 bytes are no longer read
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = dequantize, [len(subgraph.tensors) - 1], [index]
            added.append(op)
        subgraph.operators = added + list(subgraph.operators)
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _is_float_constant(model, tensor, schema) -> bool:
    if tensor.type != schema.TensorType.FLOAT32 or tensor.buffer <= 0 or tensor.buffer >= len(model.buffers):
        return False
    data = model.buffers[tensor.buffer].data
    return data is not None and len(data) >= 4 * 16  # scalars and tiny vectors stay: no gain, one more op


def _opcode(model, builtin: int, schema) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 3  # v3: float16 input
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _empty_buffer(model, schema) -> int:
    for index, buffer in enumerate(model.buffers):
        if buffer.data is None or len(buffer.data) == 0:
            return index
    model.buffers.append(schema.BufferT())
    return len(model.buffers) - 1
