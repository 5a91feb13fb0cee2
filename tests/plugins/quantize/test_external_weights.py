"""quantize reads weights that graphopt left in the model's external data file."""

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

import graphopt


def test_weight_only_on_a_model_with_external_weights(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    weight = onh.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")  # 256 KiB: stays on disk
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8, 256])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [8, 256])], [weight])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=1024)
    monkeypatch.chdir(tmp_path)  # the data file must be found from the model's folder, not the working one
    result = graphopt.optimize(str(folder / "m.onnx"), passes=["quantize"], options={"quantize": {"mode": "weight-only"}})
    entry = result.report["passes"][0]
    assert entry["status"] in ("accepted", "unchanged"), entry
    assert entry["details"]["layers"][0]["weight_sqnr_db"] > 30
