"""graphopt.tensor_shapes: per-node shape propagation agrees with ONNX's whole-graph inference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_graphsurgeon as gs

from graphopt import convert
from graphopt.tensor_shapes import propagate_shapes

# The attention-style chain reshape_own_dims unlocks: split heads, transpose, score, merge.
CHAIN = """
<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
g (float[N, 16, 64] x) => (float[N, 4, 256] y, float z) {
  target = Shape(x)
  r = Reshape(x, target)
  t = Transpose<perm = [0, 2, 1]>(r)
  s = MatMul(r, t)
  p = Softmax<axis = -1>(s)
  o = MatMul(p, r)
  y = Identity(o)
  z = custom.Mystery(o)
}"""


def _chain() -> tuple[gs.Graph, gs.Constant]:
    graph = convert.import_graph(onnx.parser.parse_model(CHAIN))
    reshape = next(node for node in graph.nodes if node.op == "Reshape")
    target = gs.Constant("target_const", np.array([0, 4, 256], dtype=np.int64))
    reshape.inputs[1] = target
    for tensor in graph.tensors().values():
        if tensor.name in ("r", "t", "s", "p", "o", "z"):
            tensor.shape, tensor.dtype = None, None
    graph.cleanup()
    return graph, target


def _inferred_shapes(graph: gs.Graph) -> dict[str, list]:
    model = onnx.shape_inference.infer_shapes(gs.export_onnx(graph, do_type_check=False), strict_mode=True)
    return {value.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]
            for value in model.graph.value_info}


def test_shapes_flow_downstream_of_a_constant_target_as_whole_graph_inference_finds_them():
    graph, target = _chain()
    expected = _inferred_shapes(graph)
    updated = propagate_shapes(graph, [target])
    tensors = graph.tensors()
    assert updated == 5  # r, t, s, p, o: z's op has no schema
    for name in ("r", "t", "s", "p", "o"):
        assert list(tensors[name].shape) == expected[name], name
        assert tensors[name].dtype == np.float32
    assert tensors["r"].shape == ["N", 4, 256] and tensors["s"].shape == ["N", 4, 4]
    assert tensors["z"].shape is None  # a custom op ends the walk without failing it


def test_known_dims_are_kept_and_a_path_stops_where_nothing_changes():
    graph, target = _chain()
    tensors = graph.tensors()
    tensors["s"].shape, tensors["s"].dtype = ["N", 4, 4], np.float32
    tensors["r"].shape = ["batch", None, None]
    assert propagate_shapes(graph, [target]) == 2  # r and t; s comes out as it was, so p is not visited
    assert tensors["r"].shape == ["batch", 4, 256] and tensors["p"].shape is None
    assert propagate_shapes(graph, [target]) == 0
