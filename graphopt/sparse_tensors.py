"""Sparse tensors made dense for graphsurgeon, which drops them.

onnx-graphsurgeon ignores sparse initializers and `sparse_value` Constant attributes, so a model
holding them would lose those weights on import; `import_graph` sees a copy in which each is a
dense tensor of the same name. A model no pass changed keeps its sparse storage.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["sparse_to_dense", "densify_sparse_tensors"]


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array of a COO `SparseTensorProto` (linear `[NNZ]` or `[NNZ, rank]` indices)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(sparse.dims)
    dense = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    linear = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), shape) if len(indices) else indices[:, 0]
    dense[linear] = values
    return dense.reshape(shape)


def densify_sparse_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when its main graph holds no sparse tensor, else a copy where each is dense."""
    graph = model.graph
    sparse_nodes = [i for i, node in enumerate(graph.node) if node.op_type == "Constant" and any(a.name == "sparse_value" for a in node.attribute)]
    if not graph.sparse_initializer and not sparse_nodes:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for sparse in copy.graph.sparse_initializer:
        copy.graph.initializer.append(numpy_helper.from_array(sparse_to_dense(sparse), sparse.values.name))
    del copy.graph.sparse_initializer[:]
    for index in sparse_nodes:
        node = copy.graph.node[index]
        sparse = next(a.sparse_tensor for a in node.attribute if a.name == "sparse_value")
        dense = numpy_helper.from_array(sparse_to_dense(sparse), node.output[0])
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", dense))
    return copy
