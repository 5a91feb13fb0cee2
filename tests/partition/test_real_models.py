"""Partitioning real exports: a torch ResNet-style CNN, a BERT-style encoder, a dynamic CNN, an If."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
import torch_models
import trait_models
from graphopt.partition.stages import run_chain
from graphopt.verify import split_samples


def _check_stages(result, model):
    for stage in result.stages:
        onnx.checker.check_model(stage, full_check=True)
    assert result.manifest["verification"]["ok"] and result.manifest["verification"]["bit_exact"]
    assert [v.name for v in result.stages[-1].graph.output] == [v.name for v in model.graph.output]


@pytest.mark.parametrize("stages, by", [(2, "latency"), (3, "macs")])
def test_resnet_like_cnn_chain_equals_whole(stages, by):
    model = torch_models.resnet_like()
    result = graphopt.partition(model, stages=stages, by=by)
    _check_stages(result, model)
    assert len(result.stages) == stages
    # Deployed settings (ORT optimizations on) still agree within the lossless tolerance.
    name = model.graph.input[0].name
    samples = split_samples({name: np.stack([torch_models.cnn_feeds(seed=s)["image"] for s in range(2)])})
    whole = run_chain([model], samples, optimize=True)
    chained = run_chain(result.stages, samples, optimize=True)
    for expected, got in zip(whole, chained):
        np.testing.assert_allclose(got["logits"], expected["logits"], rtol=1e-4, atol=1e-5)


def test_encoder_is_balanced_and_its_mask_is_carried_to_later_stages():
    model = torch_models.transformer()
    feeds = {name: np.stack([value, value + 1]) for name, value in torch_models.transformer_feeds().items()}
    result = graphopt.partition(model, stages=3, by="macs", inputs=feeds)
    _check_stages(result, model)
    assert result.manifest["verification"]["samples"] == 2
    # MACs are deterministic: a 2-layer encoder splits into nearly equal thirds.
    assert result.manifest["balance"]["slowest_over_ideal"] < 1.3
    wiring = result.manifest["stages"][1]["inputs"]
    assert all(value["from"] == {"stage": 0, "output": value["name"]} for value in wiring)


def test_dynamic_dims_are_kept_on_every_stage_interface():
    model = trait_models.dynamic_cnn()
    result = graphopt.partition(model, stages=2, by="macs", input_shapes={"image": (1, 3, 48, 40)})
    _check_stages(result, model)
    crossing = result.stages[1].graph.input
    assert any(d.dim_param for value in crossing for d in value.type.tensor_type.shape.dim)
    # A size the partition never saw runs through the chain.
    samples = [{"image": np.random.default_rng(0).standard_normal((2, 3, 64, 72)).astype(np.float32)}]
    np.testing.assert_array_equal(run_chain(result.stages, samples)[0]["logits"], run_chain([model], samples)[0]["logits"])


@pytest.mark.parametrize("stages", [2, 3])
def test_if_body_stays_with_its_node_and_gets_the_outer_tensors_it_reads(stages):
    model = trait_models.if_with_weights(width=8)
    result = graphopt.partition(model, stages=stages, by="macs", inputs={k: v[None] for k, v in trait_models.if_feeds(width=8).items()})
    _check_stages(result, model)
    owner = next(stage for stage in result.stages if any(node.op_type == "If" for node in stage.graph.node))
    # The body reads `h` from the outer scope: the stage holding the If must receive or make it.
    made_here = {name for node in owner.graph.node for name in node.output}
    assert "h" in {value.name for value in owner.graph.input} | made_here
    assert sum(node.op_type == "If" for stage in result.stages for node in stage.graph.node) == 1
    for flag in (True, False):
        sample = trait_models.if_feeds(width=8, flag=flag)
        np.testing.assert_array_equal(run_chain(result.stages, [sample])[0]["y"], run_chain([model], [sample])[0]["y"])


def test_weight_cap_spreads_weights_and_too_small_a_cap_is_refused():
    model = torch_models.transformer()
    whole = graphopt.partition(model, stages=2, by="macs")
    cap = max(stage["weight_bytes"] for stage in whole.manifest["stages"]) - 1
    capped = graphopt.partition(model, stages=2, by="macs", max_stage_bytes=cap)
    assert max(stage["weight_bytes"] for stage in capped.manifest["stages"]) <= cap
    with pytest.raises(graphopt.InputError, match="weight"):
        graphopt.partition(model, stages=2, by="macs", max_stage_bytes=1000)
