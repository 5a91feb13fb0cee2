"""The Ray backend against a local cluster started and stopped inside the test."""

from __future__ import annotations

import numpy as np
import pytest

import torch_models
from graphopt.partition import partition_to_dir
from graphopt.partition.runner import PipelineError
from graphopt.partition.stages import run_chain
from graphopt.pipeline_runner import run

ray = pytest.importorskip("ray", reason="the ray extra (graphopt[ray]) is not installed")


def test_stages_as_ray_actors_give_the_whole_models_results_in_order(tmp_path):
    model = torch_models.resnet_like()
    partition_to_dir(model, tmp_path / "stages", stages=2, by="macs")
    name = model.graph.input[0].name
    rng = np.random.default_rng(0)
    samples = [{name: rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    expected = run_chain([model], samples, optimize=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = list(run(tmp_path / "stages", samples, backend="ray", queue_size=1))
        assert len(results) == len(samples)
        for want, got in zip(expected, results):
            np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
        chunked = list(run(tmp_path / "stages", samples, backend="ray", samples_per_call=3))  # calls of 3, 3 and 2
        assert len(chunked) == len(samples)
        for want, got in zip(expected, chunked):
            np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
        bad = samples[:1] + [{name: np.zeros((1, 5, 32, 32), np.float32)}]
        with pytest.raises(PipelineError, match="stage 0 failed") as caught:
            list(run(tmp_path / "stages", bad, backend="ray"))
        assert caught.value.stage == 0
        got = []
        with pytest.raises(PipelineError, match="stage 0 failed"):  # the bad sample is the 5th, in the 2nd call
            for result in run(tmp_path / "stages", samples[:4] + bad[1:] + samples[4:], backend="ray", samples_per_call=3):
                got.append(result)
        assert len(got) == 3  # the first call's results, whole; nothing of the failed call
    finally:
        ray.shutdown()


def test_samples_per_call_follows_the_measured_stage_costs():
    from graphopt.partition.ray_backend import _chunks
    from graphopt.partition.runner import default_samples_per_call

    def manifest(by, costs, bytes_per_sample=1000):
        return {"plan": {"by": by}, "stages": [{"cost": cost, "inputs": [{"bytes": bytes_per_sample}], "outputs": [{"bytes": 10}]}
                                               for cost in costs]}

    assert default_samples_per_call(manifest("latency", [0.004, 0.0041])) == 16  # capped
    assert default_samples_per_call(manifest("latency", [0.02, 0.045])) == 9  # the slowest stage decides: 0.4 s / 45 ms
    assert default_samples_per_call(manifest("latency", [0.02, 0.045], bytes_per_sample=16 * 2**20)) == 4  # 64 MiB a call
    assert default_samples_per_call(manifest("latency", [0.5, 0.45])) == 1
    assert default_samples_per_call(manifest("macs", [4e6, 5e6])) == 1  # MACs are not seconds
    assert [len(chunk) for chunk in _chunks(({"x": i} for i in range(8)), 3)] == [3, 3, 2]
