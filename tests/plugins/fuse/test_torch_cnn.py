"""The structural fuse rules on real CNNs exported from torch by both exporters.

Both exporters fold eval-mode BatchNormalization into the Conv themselves by default, so the
default exports check that `fuse` keeps them exact and leaves no BN; a TorchScript export with
`training=PRESERVE` keeps every BN as a node, and `fuse` must fold each one.
"""

import io
import warnings

import numpy as np
import pytest
import torch_models
from fuse_support import fuse, op_counts, run

import graphopt
from graphopt.verify.metrics import tolerance_for

MODELS = {"cnn": (torch_models.cnn, torch_models._cnn_module), "resnet_like": (torch_models.resnet_like, torch_models._resnet_module)}


def _check(model, fused):
    import onnx

    onnx.checker.check_model(fused, full_check=True)
    feeds = torch_models.cnn_feeds()
    (expected,), (actual,) = run(model, feeds), run(fused, feeds)
    tolerance = tolerance_for(expected.dtype)
    np.testing.assert_allclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol)
    again, stats = fuse(fused)
    assert not any(stats.values()), f"second run rewrote again: {stats}"
    assert again.SerializeToString() == fused.SerializeToString()


@pytest.mark.parametrize("exporter", torch_models.EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_default_exports_stay_exact_and_keep_no_batchnorm(name, exporter):
    model = MODELS[name][0](exporter)
    fused = graphopt.optimize(model, passes=["cleanup", "fuse"], verify="off").model
    _check(model, fused)
    assert "BatchNormalization" not in op_counts(fused)
    assert len(fused.graph.node) <= len(model.graph.node)


def _export_keeping_batchnorm(module):
    import onnx
    import torch

    buffer = io.BytesIO()
    example = torch.from_numpy(torch_models.cnn_feeds()["image"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], training=torch.onnx.TrainingMode.PRESERVE)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("name", MODELS)
def test_every_batchnorm_of_an_unfolded_export_is_folded(name):
    model = _export_keeping_batchnorm(MODELS[name][1](0))
    batchnorms = op_counts(model)["BatchNormalization"]
    assert batchnorms >= 5
    fused, stats = fuse(model)
    _check(model, fused)
    assert stats["bn_fold"] == batchnorms
    assert "BatchNormalization" not in op_counts(fused)
    assert op_counts(fused)["Conv"] == op_counts(model)["Conv"]
