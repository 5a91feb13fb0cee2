"""graphopt/verify/calibration_sources.py: calibration from folders of .npy/.npz/images and from iterables."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from quantize_support import single_op_model

import graphopt
from graphopt.api import prepare_feeds
from graphopt.cli import main
from graphopt.verify.calibration_sources import MAX_SAMPLES, CalibrationFolder, Preprocessing


def test_folder_of_npy_and_npz_samples(tmp_path):
    model = single_op_model("Conv")  # x: (1, 16, 12, 12)
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(tmp_path / f"s{i}.npy", rng.standard_normal((16, 12, 12)).astype(np.float32))  # batch axis left out
    np.savez(tmp_path / "s3.npz", x=rng.standard_normal((1, 16, 12, 12)).astype(np.float32))
    feeds = prepare_feeds(str(tmp_path), model, option="--calibration")
    assert feeds["x"].shape == (4, 1, 16, 12, 12)
    assert np.array_equal(feeds["x"][0, 0], np.load(tmp_path / "s0.npy"))


def test_an_iterable_is_read_lazily_up_to_the_cap():
    model = single_op_model("Conv")
    taken = []

    def samples():
        for i in range(10_000):
            taken.append(i)
            yield {"x": np.full((1, 16, 12, 12), i, np.float32)}

    feeds = prepare_feeds(samples(), model, option="--calibration")
    assert feeds["x"].shape[0] == MAX_SAMPLES and len(taken) == MAX_SAMPLES


def test_image_folder_with_recipe_preprocessing(tmp_path):
    from PIL import Image

    inputs = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 8, 10])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["image"], ["y"])], "g", [inputs],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 10])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[..., 0] = 255
    for i in range(2):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    recipe = Preprocessing.from_table({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    feeds = prepare_feeds(CalibrationFolder(tmp_path, recipe), model, option="--calibration")
    assert feeds["image"].shape == (2, 1, 3, 8, 10)  # resized to the model's 8 x 10, NCHW, batch axis added
    assert np.allclose(feeds["image"][:, :, 0], 1.0) and np.allclose(feeds["image"][:, :, 1:], -1.0)


def test_cli_takes_a_folder_and_a_recipe_table(tmp_path):
    model = single_op_model("Conv")
    onnx.save(model, tmp_path / "m.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"{i}.npy", np.random.default_rng(i).standard_normal((1, 16, 12, 12)).astype(np.float32))
    (tmp_path / "r.toml").write_text('passes = ["quantize"]\n[quantize]\nlatency = "off"\n[calibration]\nlayout = "NCHW"\n')
    code = main(["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calibration", str(folder),
                 "--recipe", str(tmp_path / "r.toml"), "--quiet"])
    assert code == 0 and any(n.op_type == "QuantizeLinear" for n in onnx.load(tmp_path / "q.onnx").graph.node)


def test_bad_recipe_table_is_an_input_error():
    with pytest.raises(graphopt.errors.InputError, match="unknown keys"):
        Preprocessing.from_table({"sizes": [1, 2]})
