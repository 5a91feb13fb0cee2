"""A pass that needs a newer opset gets it from the pipeline, or the run stops with exit 2 — never a skip."""

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
import pytest

import graphopt
import torch_models
import trait_models
from graphopt.errors import InputError
from graphopt.opset_requirements import ImplicitConversion, with_opset_conversions
from graphopt.registry import load_registry
from graphopt_plugins.quantize.quantize_pass import Quantize


def _opset(model) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _calibration(count=8, size=32):
    return {"image": np.stack([torch_models.cnn_feeds(1, size, seed=seed)["image"] for seed in range(count)])}


@pytest.mark.parametrize("opset", [11, 12])
def test_quantize_on_an_old_opset_cnn_converts_and_quantizes_without_a_flag(opset):
    model = trait_models.dynamic_cnn(opset)
    # latency=off stands for "a machine where int8 is faster": CI's timing must not decide the test
    result = graphopt.optimize(model, passes=["cleanup", "fuse", "quantize"], calibration=_calibration(),
                               options={"quantize": {"latency": "off"}}, input_shapes={"image": (1, 3, 32, 32)}, never_slower=False)
    names = [entry["name"] for entry in result.report["passes"]]
    assert names == ["cleanup", "fuse", "opset", "quantize"]
    conversion = result.report["passes"][2]
    assert conversion["implicit"] == {"for": "quantize", "needs_opset": 13, "from_opset": opset}
    assert conversion["status"] == "accepted" and result.report["passes"][3]["status"] == "accepted"
    assert any("for pass 'quantize'" in warning for warning in result.report["warnings"])
    assert _opset(result.model) == 13
    ops = {node.op_type for node in result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    onnx.checker.check_model(result.model, full_check=True)
    feeds = torch_models.cnn_feeds(2, 48)  # the dynamic interface still runs at another shape
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, feeds)[0].shape == (2, 10)


def test_a_users_own_opset_pass_is_not_doubled():
    registry = load_registry().registry
    passes = [registry.get("opset")(registry.get("opset").Options(target=17)), Quantize()]
    assert with_opset_conversions(passes, registry, trait_models.dynamic_cnn(11)) == passes


def test_one_conversion_serves_every_later_need():
    registry = load_registry().registry
    int4 = Quantize(Quantize.Options(mode="weight-only", weight_bits=4))
    planned = with_opset_conversions([registry.get("cleanup")(), Quantize(), int4], registry, trait_models.dynamic_cnn(12))
    assert [type(p).__name__ for p in planned] == ["Cleanup", "ImplicitConversion", "Quantize", "Quantize"]
    assert isinstance(planned[1], ImplicitConversion) and planned[1].options.target == 21
    assert with_opset_conversions([Quantize()], registry, trait_models.dynamic_cnn(17))[0].name == "quantize"


def test_a_model_the_converter_refuses_is_exit_2_naming_the_pass(monkeypatch):
    def refuse(model, target):
        raise RuntimeError("No Adapter For Upsample")
    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(InputError, match=r"pass 'quantize' needs opset 13; the model has 11 and cannot be converted") as caught:
        graphopt.optimize(trait_models.dynamic_cnn(11), passes=["cleanup", "quantize"], calibration=_calibration(2),
                          input_shapes={"image": (1, 3, 32, 32)}, keep_going=True)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("verify", ["each", "off"])
def test_a_conversion_no_pass_built_on_is_undone(verify):
    model = trait_models.dynamic_cnn(11)
    # every Conv excluded: quantize changes nothing at opset 13, so the model keeps opset 11
    result = graphopt.optimize(model, passes=["cleanup", "quantize"], calibration=_calibration(), verify=verify,
                               options={"quantize": {"latency": "off", "exclude": ["Conv", "Gemm", "MatMul"]}},
                               input_shapes={"image": (1, 3, 32, 32)}, never_slower=False)
    conversion = next(entry for entry in result.report["passes"] if entry.get("implicit"))
    assert conversion["status"] == "rolled_back" and "changed nothing" in conversion["reason"]
    assert _opset(result.model) == 11
    assert not any("for pass 'quantize'" in warning for warning in result.report["warnings"])
    onnx.checker.check_model(result.model, full_check=True)
    cleaned = graphopt.optimize(model, passes=["cleanup"], verify=verify, input_shapes={"image": (1, 3, 32, 32)},
                                never_slower=False)
    assert result.model.SerializeToString() == cleaned.model.SerializeToString()
