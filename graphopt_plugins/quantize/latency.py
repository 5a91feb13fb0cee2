"""Does int8 pay on the target? The per-layer models quantize times, float against int8.

The timing itself is the run's latency backend's (`graphopt.latency`, `--latency-on`); on the
default `host-ort`, onnxruntime with all optimizations at 1 thread, CPU-time medians.

Per layer, the float node (with its absorbed Relu) is timed against its quantized form as it
will run in place: 8-bit in when its producer is quantized too (else float in, through Q),
8-bit out when every reader is quantized too (else through DQ); float in and out in dynamic
mode, which quantizes its input on every call.
Depthwise convs, tiny layers and ops onnxruntime cannot fuse come out slower and stay float.
End to end, the quantized model is timed against the float one, interleaved, since the
machine is shared: that is the guard that the result is never slower.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from graphopt import convert
from graphopt.latency.host_ort import interleaved_cpu_medians, medians
from graphopt.external_data import read_external

__all__ = ["interleaved_medians", "layer_models", "constant_tensors"]


def interleaved_medians(models: list[onnx.ModelProto], feeds: list[dict], budget_seconds: float = 0.3,
                        rounds: int = 3) -> list[float]:
    """Median milliseconds of one run of each model on this host's onnxruntime (`graphopt.latency.host_ort`)."""
    return medians(interleaved_cpu_medians(models, feeds, budget_seconds, rounds))


def layer_models(model: onnx.ModelProto, index: int, relu: str | None, input_shape: tuple[int, ...],
                 quantize: Callable[[gs.Graph], None], integer_in: bool, integer_out: bool
                 ) -> tuple[onnx.ModelProto, onnx.ModelProto, dict, dict] | None:
    """(float model, quantized model, float feed, quantized feed) of node `index` alone, or None."""
    node = model.graph.node[index]
    initializers = constant_tensors(model)
    weights = [initializers[name] for name in node.input[1:] if name in initializers]
    if len(weights) != len([name for name in node.input[1:] if name]):
        return None
    nodes = [onnx.NodeProto()]
    nodes[0].CopyFrom(node)
    output = node.output[0]
    if relu:
        output = relu
        nodes.append(onnx.helper.make_node("Relu", [node.output[0]], [relu], name=node.name + "_relu"))
    graph = onnx.helper.make_graph(
        nodes, "layer", [onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, list(input_shape))],
        [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)], weights)
    float_model = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    float_model = onnx.shape_inference.infer_shapes(float_model)
    quantized_graph = convert.import_graph(float_model)
    quantize(quantized_graph)
    feed = {node.input[0]: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    quantized_feed = feed
    if integer_in or integer_out:
        quantized_feed = _keep_integer_boundaries(quantized_graph, node.input[0], integer_in, integer_out)
    quantized_graph.cleanup().toposort(mode="nodes")
    quantized = convert.export_model(quantized_graph, float_model)
    return float_model, quantized, feed, quantized_feed or feed


class _LoadedOnRead(dict):
    """Tensors by name; one whose data is still in the model's external file is read when asked for.

    graphopt leaves big weights in their files (`model_io.load_model`); a per-layer model or a
    weight statistic needs the values, and reading them one at a time keeps memory to one weight.
    """

    def __getitem__(self, name):
        tensor = super().__getitem__(name)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return tensor
        return onnx.numpy_helper.from_array(np.array(read_external(tensor)), tensor.name)

    def get(self, name, default=None):
        return self[name] if name in self else default


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The main graph's initializers and Constant-node values (`value` form), by name."""
    found = _LoadedOnRead({t.name: t for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            found[tensor.name] = tensor
    return found


def _keep_integer_boundaries(graph: gs.Graph, input_name: str, integer_in: bool, integer_out: bool) -> dict | None:
    """Feeds the 8-bit tensor instead of quantizing the float input (the producer is int8 too),
    and returns the 8-bit output instead of dequantizing it (every reader is int8 too)."""
    if integer_out:
        out = graph.outputs[0]
        maker = out.inputs[0] if out.inputs else None
        if maker is not None and maker.op == "DequantizeLinear":
            graph.outputs = [maker.inputs[0]]
    x = next(t for t in graph.inputs if t.name == input_name)
    q_nodes = [n for n in x.outputs if n.op == "QuantizeLinear"]
    if not integer_in or not q_nodes:
        return None
    quantized = q_nodes[0].outputs[0]
    q_nodes[0].outputs.clear()
    graph.inputs = [quantized]
    zero = int(np.asarray(q_nodes[0].inputs[2].values)) if len(q_nodes[0].inputs) > 2 else 0
    values = np.random.default_rng(0).integers(0, 256, quantized.shape).astype(quantized.dtype)
    values[values == 0] = zero
    return {quantized.name: values}
