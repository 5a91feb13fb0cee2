"""graphopt.graph_queries and graphopt.convert: use-def look-ups by identity, nested graphs, the networkx view, envelope round trip."""

import numpy as np
import onnx
import onnx.parser
import onnx_graphsurgeon as gs

from graphopt import convert, graph_queries, tensor_shapes

NESTED = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1], producer_name: "exporter", doc_string: "kept">
g (float[2] x, bool c) => (float[2] z) {
  y = Relu(x)
  w = Neg(y)
  z = If(c) <then_branch = t () => (float[2] a) { a = Neg(y) }, else_branch = e () => (float[2] b) { b = Abs(y) }>
}
<domain: "local", opset_import: ["" : 17]>
f (p) => (q) { q = Neg(p) }
"""


def _nested_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(NESTED)
    model.metadata_props.add(key="origin", value="test")
    return model


def _tensor(graph: gs.Graph, name: str) -> gs.Tensor:
    return next(tensor for tensor in graph.tensors().values() if tensor.name == name)


def test_iter_graphs_visits_bodies_and_functions():
    graph = convert.import_graph(_nested_model())
    names = [g.name for g in graph_queries.iter_graphs(graph)]
    assert names == ["g", "t", "e", "f"]
    assert [g.name for g in graph_queries.iter_graphs(graph, functions=False)] == ["g", "t", "e"]


def test_consumers_include_readers_inside_bodies():
    graph = convert.import_graph(_nested_model())
    y = _tensor(graph, "y")
    assert sorted(node.op for node in graph_queries.consumers(y)) == ["Abs", "Neg", "Neg"]
    assert graph_queries.producer(y).op == "Relu"
    assert graph_queries.producer(_tensor(graph, "x")) is None


def test_replace_all_uses_rewires_body_readers():
    graph = convert.import_graph(_nested_model())
    x, y = _tensor(graph, "x"), _tensor(graph, "y")
    moved = graph_queries.replace_all_uses(y, x)
    assert moved == 3
    then_branch = graph.nodes[2].attrs["then_branch"]
    assert then_branch.nodes[0].inputs[0] is x
    assert graph_queries.consumers(y) == []


def test_networkx_view_keys_by_node_identity_and_counts_body_reads():
    graph = convert.import_graph(_nested_model())
    view = graph_queries.to_networkx(graph)
    relu, neg, if_node = graph.nodes
    assert set(view.nodes) == {id(relu), id(neg), id(if_node)}
    assert view.has_edge(id(relu), id(neg))
    # The If reads `y` only inside its bodies; the dependency must still be there.
    assert view.has_edge(id(relu), id(if_node))


def test_export_keeps_the_model_envelope():
    model = _nested_model()
    exported = convert.export_model(convert.import_graph(model), model)
    onnx.checker.check_model(exported, full_check=True)
    assert exported.ir_version == 8
    assert exported.producer_name == "exporter" and exported.doc_string == "kept"
    assert [(p.key, p.value) for p in exported.metadata_props] == [("origin", "test")]
    assert {(o.domain, o.version) for o in exported.opset_import} == {("", 17), ("local", 1)}
    assert [f.name for f in exported.functions] == ["f"]


def test_constant_value_reads_initializers_and_constant_nodes():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> {
      k = Constant <value = float[2] {3.0, 4.0}> ()
      s = Add(x, w)
      y = Mul(s, k)
    }""")
    graph = convert.import_graph(model)
    np.testing.assert_array_equal(graph_queries.constant_value(_tensor(graph, "w")), [1.0, 2.0])
    np.testing.assert_array_equal(graph_queries.constant_value(_tensor(graph, "k")), [3.0, 4.0])
    assert graph_queries.constant_value(_tensor(graph, "s")) is None


def test_opset_version_reads_the_default_and_custom_domains():
    graph = convert.import_graph(_nested_model())
    assert graph_queries.opset_version(graph) == 17
    assert graph_queries.opset_version(graph, "local") == 1
    assert graph_queries.opset_version(graph, "com.microsoft") is None


def test_before_ir4_every_initializer_stays_a_graph_input():
    model = onnx.parser.parse_model("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2,3] x, float[2,3] w) => (float[2,3] y) <float[2,3] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}> {
      y = Mul(x, w)
    }""")
    exported = convert.export_model(convert.import_graph(model), model)
    onnx.checker.check_model(exported, full_check=True)
    assert [value.name for value in exported.graph.input] == ["x", "w"]


def test_an_overridable_input_is_imported_as_an_input_not_a_constant():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x, float[3] bias) => (float[3] y) <float[3] bias = {1.0, 2.0, 3.0}> { y = Add(x, bias) }""")
    graph = convert.import_graph(model)
    assert [t.name for t in graph.inputs] == ["x", "bias"]
    assert not isinstance(graph.inputs[1], gs.Constant)
    exported = convert.export_model(graph, model)
    assert [t.name for t in exported.graph.initializer] == ["bias"]
    onnx.checker.check_model(exported, full_check=True)


def test_node_graph_and_function_annotations_survive_a_change():
    model = _nested_model()
    model.graph.node[0].doc_string = "the relu"
    model.graph.node[0].metadata_props.add(key="source", value="layer1")
    model.graph.node[2].attribute[0].g.node[0].doc_string = "in a body"
    model.graph.metadata_props.add(key="graph", value="main")
    model.functions[0].metadata_props.add(key="fn", value="f")
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
    model.graph.node[2].attribute[0].g.node[0].name = "body_neg"
    graph = convert.import_graph(model)
    graph.nodes[1].op = "Abs"  # a change elsewhere
    exported = convert.export_model(graph, model)
    relu = exported.graph.node[0]
    assert relu.doc_string == "the relu" and [(p.key, p.value) for p in relu.metadata_props] == [("source", "layer1")]
    assert exported.graph.node[2].attribute[0].g.node[0].doc_string == "in a body"
    assert [(p.key, p.value) for p in exported.graph.metadata_props] == [("graph", "main")]
    assert [(p.key, p.value) for p in exported.functions[0].metadata_props] == [("fn", "f")]
    onnx.checker.check_model(exported, full_check=True)


# --- linear-time toposort and dead-node removal ------------------------------------------------

UNSORTED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] z) {
  z = Add(b, w)
  dead = Neg(x)
  w = If(c) <then_branch = t () => (float[2] p) { p = Neg(a) }, else_branch = e () => (float[2] q) { q = Identity(a) }>
  b = Relu(a)
  a = Abs(x)
}
"""


def _positions(graph: gs.Graph) -> dict[str, int]:
    return {node.outputs[0].name: index for index, node in enumerate(graph.nodes)}


def test_toposort_puts_every_producer_first_including_outer_reads_of_bodies():
    graph = convert.import_graph(onnx.parser.parse_model(UNSORTED))
    graph_queries.toposort(graph)
    at = _positions(graph)
    assert at["a"] < at["b"] < at["z"]
    assert at["a"] < at["w"] < at["z"]  # the If reads `a` only inside its bodies
    exported = convert.export_model(graph, onnx.parser.parse_model(UNSORTED))
    onnx.checker.check_model(exported, full_check=True)


def test_toposort_keeps_a_sorted_graph_in_its_order():
    graph = convert.import_graph(onnx.parser.parse_model(UNSORTED))
    graph_queries.toposort(graph)
    order = [id(node) for node in graph.nodes]
    graph_queries.toposort(graph)
    assert [id(node) for node in graph.nodes] == order


def test_toposort_handles_a_chain_deeper_than_the_recursion_limit():
    import sys

    depth = sys.getrecursionlimit() + 500
    text = "\n".join(f"  t{i + 1} = Relu(t{i})" for i in range(depth))
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\ng (float[2] t0) => (float[2] t{depth}) {{\n{text}\n}}')
    graph = convert.import_graph(model)
    graph.nodes.reverse()
    graph_queries.toposort(graph)
    assert [node.outputs[0].name for node in graph.nodes] == [f"t{i + 1}" for i in range(depth)]


def test_remove_dead_nodes_keeps_what_outputs_and_bodies_read_and_unlinks_the_rest():
    graph = convert.import_graph(onnx.parser.parse_model(UNSORTED))
    x = _tensor(graph, "x")
    assert len(graph_queries.consumers(x)) == 2  # Abs and the dead Neg
    assert graph_queries.remove_dead_nodes(graph) == 1
    assert sorted(node.op for node in graph.nodes) == ["Abs", "Add", "If", "Relu"]
    assert [node.op for node in graph_queries.consumers(x)] == ["Abs"]
    assert graph_queries.remove_dead_nodes(graph) == 0


def test_remove_dead_nodes_sweeps_bodies_and_keeps_the_outer_values_they_read():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] z) {
      a = Abs(x)
      z = If(c) <then_branch = t () => (float[2] p) { unused = Neg(x)  p = Identity(x) }, else_branch = e () => (float[2] a2) { a2 = Identity(a) }>
    }
    """
    graph = convert.import_graph(onnx.parser.parse_model(text))
    assert graph_queries.remove_dead_nodes(graph) == 1  # the body's unused Neg
    assert [node.op for node in graph.nodes] == ["Abs", "If"]


def test_refresh_shapes_infers_through_large_weights_and_leaves_their_values_alone():
    import numpy as np
    import onnx_graphsurgeon as gs

    weight = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)  # 8 KiB: exported as a placeholder
    shape = np.array([2, -1], dtype=np.int64)  # a shape tensor: kept, data propagation reads it
    x = gs.Variable("x", dtype=np.float32, shape=[4, 64])
    product, flat, y = gs.Variable("product"), gs.Variable("flat"), gs.Variable("y", dtype=np.float32)
    graph = gs.Graph(nodes=[gs.Node("MatMul", inputs=[x, gs.Constant("w", weight)], outputs=[product]),
                            gs.Node("Reshape", inputs=[product, gs.Constant("shape", shape)], outputs=[flat]),
                            gs.Node("Relu", inputs=[flat], outputs=[y])],
                     inputs=[x], outputs=[y], opset=17)
    assert tensor_shapes.refresh_shapes(graph) == 2
    assert list(product.shape) == [4, 32] and list(flat.shape) == [2, 64]
    constant = graph.tensors()["w"]
    assert type(constant._values) is np.ndarray and constant.values is weight
