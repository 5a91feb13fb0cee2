"""Equal quantization across the int8 ops that cannot rescale, set in onnx2tf's flatbuffer.

LiteRT's int8 TRANSPOSE, RESHAPE, RESIZE_NEAREST_NEIGHBOR, MAX_POOL_2D, PAD, … (and XNNPACK,
which refuses to delegate them otherwise) move int8 values without arithmetic, so their output
must have their input's scale and zero point. onnx2tf 2.6.9's strict int8 writer sometimes gives
them different ones: a CONCATENATION forces its own parameters onto its inputs, which are the
outputs of such ops (PP-OCRv4 det: Resize → Transpose → Concat, scale 3.6 in, 16.2 out), and
LiteRT then fails to prepare the model. Here each such op's input takes its output's parameters,
walking back through chains of them to the op that computes the tensor (a CONV_2D, an ADD),
which can write any scale: the values stay what the calibration made them, at the coarser scale
the later op needed anyway. Never changes a graph input or a constant; a tensor two such ops
pull to different parameters is left as it was (the model then fails as before, with LiteRT's
reason).
"""

from __future__ import annotations

__all__ = ["reconcile_passthrough_qparams", "PASSTHROUGH_OPS"]

PASSTHROUGH_OPS = ("TRANSPOSE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "RESIZE_NEAREST_NEIGHBOR", "MAX_POOL_2D", "PAD", "PADV2",
                   "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "GATHER", "SLICE", "STRIDED_SLICE")


def reconcile_passthrough_qparams(flatbuffer: bytes) -> tuple[bytes, int]:
    """The flatbuffer with every passthrough op's int8 input given its output's parameters; how many changed."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    passthrough = {index for index, code in enumerate(model.operatorCodes)
                   if names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) in PASSTHROUGH_OPS}
    changed = 0
    for subgraph in model.subgraphs:
        fixed = set(subgraph.inputs if subgraph.inputs is not None else ())
        pulled: dict[int, tuple] = {}
        for _ in range(len(subgraph.operators)):  # each round moves the parameters one op further back
            moved = 0
            for op in subgraph.operators:
                if op.opcodeIndex not in passthrough or op.inputs is None or op.outputs is None or len(op.inputs) == 0:
                    continue
                source, target = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.outputs[0]]
                wanted = _params(target, schema)
                if (op.inputs[0] in fixed or source.buffer and model.buffers[source.buffer].data is not None
                        or wanted is None or _params(source, schema) in (None, wanted)):
                    continue
                if pulled.setdefault(op.inputs[0], wanted) != wanted:
                    continue  # two ops want different parameters for it: leave it
                source.quantization.scale, source.quantization.zeroPoint = list(target.quantization.scale), list(target.quantization.zeroPoint)
                moved += 1
            changed += moved
            if not moved:
                break
    if not changed:
        return flatbuffer, 0
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), changed


def _params(tensor, schema) -> tuple | None:
    """(scale, zero point) of a per-tensor int8 tensor, else None."""
    q = tensor.quantization
    if tensor.type != schema.TensorType.INT8 or q is None or q.scale is None or len(q.scale) != 1:
        return None
    return float(q.scale[0]), int(q.zeroPoint[0])
