"""im2col patches reproduce a Conv in onnxruntime, so the Hessians SparseGPT uses are the layer's."""

import numpy as np
import pytest
from onnx import helper

from graphopt_plugins.prune.statistics import im2col
from prune_support import build, run


@pytest.mark.parametrize("strides, pads, dilations", [((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 2), (0, 1, 1, 0), (1, 1)), ((1, 2), (2, 2, 2, 2), (2, 2))])
def test_im2col_matches_conv(strides, pads, dilations):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(strides), pads=list(pads), dilations=list(dilations))
    model = build([node], {"x": [1, 3, 9, 11]}, ["y"], {"w": weight})
    x = rng.normal(size=(1, 3, 9, 11)).astype(np.float32)
    (expected,) = run(model, {"x": x})
    patches = im2col(x, (3, 3), strides, pads, dilations)
    actual = (patches @ weight.reshape(5, -1).T).reshape(expected.shape[2], expected.shape[3], 5).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
