"""LiteRT flatbuffers of consecutive pieces of one model joined into one flatbuffer.

`tflite_mixed` converts a model in pieces, some float32 and some int8 (each an onnx2tf
flatbuffer with float32 inputs and outputs), that follow each other through one tensor each.
`chain_flatbuffers` appends each piece's tensors, buffers and operators to the first piece's
subgraph, with its operator codes shared, and reads the previous piece's output where the next
piece read its input. onnx2tf lays a rank-4 image out channels last at both ends of a piece, so
the shapes match; where they do not but moving the channels does, a TRANSPOSE joins them. The
joined model keeps the first piece's inputs, signature and metadata, and the last piece's outputs.
"""

from __future__ import annotations

import numpy as np

from graphopt.errors import InputError

__all__ = ["chain_flatbuffers"]


def chain_flatbuffers(pieces: list[tuple[bytes, list[str], list[str]]], outputs: list[str]) -> bytes:
    """One flatbuffer running `pieces` in order; each is (flatbuffer, its inputs' names, its outputs' names),
    the names the model's (a piece's flatbuffer has its inputs and outputs in that order); `outputs` the model's."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    models = [schema.ModelT.InitFromObj(schema.Model.GetRootAs(piece, 0)) for piece, _, _ in pieces]
    joined, graph = models[0], models[0].subgraphs[0]
    if any(len(model.subgraphs) != 1 for model in models):
        raise InputError("LiteRT pieces are joined one subgraph each; a piece has more")
    where = dict(zip(pieces[0][1], graph.inputs))
    where.update(zip(pieces[0][2], graph.outputs))
    for model, (_, inputs, produced) in zip(models[1:], pieces[1:]):
        where.update(_append(joined, model, inputs, produced, where, schema))
    graph.outputs = [where[name] for name in outputs]
    signature = (joined.signatureDefs or [None])[0]
    if signature is not None:
        entries = [entry for model in models for entry in (model.signatureDefs[0].outputs if model.signatureDefs else None) or []]
        by_index = {entry.tensorIndex: entry for entry in entries}  # indices already moved to the joined subgraph
        signature.outputs = [by_index[index] for index in graph.outputs if index in by_index] or None
    builder = flatbuffers.Builder(sum(len(piece) for piece, _, _ in pieces) + 4096)
    builder.Finish(joined.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _append(joined, model, inputs: list[str], produced: list[str], where: dict, schema) -> dict:
    """`model`'s subgraph run after `joined`'s, its inputs read where `where` says; where its outputs went."""
    graph, after = joined.subgraphs[0], model.subgraphs[0]
    codes = {}
    for index, code in enumerate(model.operatorCodes):
        key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
        found = next((i for i, have in enumerate(joined.operatorCodes)
                      if (have.builtinCode, have.deprecatedBuiltinCode, have.customCode, have.version) == key), None)
        if found is None:
            joined.operatorCodes.append(code)
            found = len(joined.operatorCodes) - 1
        codes[index] = found
    buffer_base, tensor_base = len(joined.buffers), len(graph.tensors)
    joined.buffers.extend(model.buffers[1:])  # buffer 0 is the empty sentinel in every model
    names = {_text(tensor.name) for tensor in graph.tensors}
    for tensor in after.tensors:
        tensor.buffer = tensor.buffer + buffer_base - 1 if tensor.buffer else 0
        if _text(tensor.name) in names:
            tensor.name = f"{_text(tensor.name)}__{tensor_base}"
        graph.tensors.append(tensor)
    feeds = {}
    by_name = {_text(after.tensors[index].name): index for index in after.inputs}
    ordered = [by_name[name] for name in inputs] if set(by_name) == set(inputs) else list(after.inputs)
    for name, index in zip(inputs, ordered):
        if name not in where:  # a model input no earlier piece read
            graph.inputs = [*graph.inputs, index + tensor_base]
            where[name] = index + tensor_base
        feed = where[name]
        if list(graph.tensors[feed].shape) != list(after.tensors[index].shape):
            feed = _transposed(joined, graph, feed, list(after.tensors[index].shape), schema)
        feeds[index] = feed
    for op in after.operators:
        op.opcodeIndex = codes[op.opcodeIndex]
        op.inputs = [feeds[i] if i in feeds else (i + tensor_base if i >= 0 else i) for i in op.inputs]
        op.outputs = [i + tensor_base for i in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [i + tensor_base for i in op.intermediates]
        graph.operators.append(op)
    for signature in model.signatureDefs or []:
        for entry in signature.outputs or []:
            entry.tensorIndex += tensor_base
    return {name: index + tensor_base for name, index in zip(produced, after.outputs)}


def _transposed(joined, graph, handed: int, shape: list[int], schema) -> int:
    """A TRANSPOSE of tensor `handed` into `shape` (channels moved last or first); the new tensor's index."""
    source = list(graph.tensors[handed].shape)
    rank = len(source)
    for perm in ([0, *range(2, rank), 1], [0, rank - 1, *range(1, rank - 1)]):
        if rank >= 3 and [source[p] for p in perm] == shape:
            break
    else:
        raise InputError(f"LiteRT pieces do not join: a {source} output feeds a {shape} input")
    buffer = schema.BufferT()
    buffer.data = np.asarray(perm, np.int32).view(np.uint8).tolist()
    joined.buffers.append(buffer)
    perm_tensor = schema.TensorT()
    perm_tensor.shape, perm_tensor.type, perm_tensor.buffer = [rank], schema.TensorType.INT32, len(joined.buffers) - 1
    perm_tensor.name = f"{_text(graph.tensors[handed].name)}_join_perm"
    out = schema.TensorT()
    out.shape, out.type, out.buffer = shape, graph.tensors[handed].type, 0
    out.name = f"{_text(graph.tensors[handed].name)}_join"
    graph.tensors.extend([perm_tensor, out])
    code = next((i for i, c in enumerate(joined.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.TRANSPOSE), None)
    if code is None:
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = schema.BuiltinOperator.TRANSPOSE, schema.BuiltinOperator.TRANSPOSE, 1
        joined.operatorCodes.append(entry)
        code = len(joined.operatorCodes) - 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, [handed, len(graph.tensors) - 2], [len(graph.tensors) - 1]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.TransposeOptions, schema.TransposeOptionsT()
    graph.operators.append(op)
    return len(graph.tensors) - 1


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name or "")
