"""The pipelined runner, local backend: results in order and equal to the whole model; faults end the run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

import graphopt
import torch_models
from graphopt.partition.runner import PipelineError
from graphopt.partition.stages import run_chain
from graphopt.pipeline_runner import run


@pytest.fixture(scope="module")
def cnn_partition(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn") / "stages"
    model = torch_models.resnet_like()
    from graphopt.partition import partition_to_dir

    partition_to_dir(model, folder, stages=2, by="macs")
    return model, folder


def _samples(count, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(count)]


def test_results_come_back_in_order_and_equal_the_whole_model(cnn_partition):
    model, folder = cnn_partition
    samples = _samples(12)
    name = model.graph.input[0].name
    samples = [{name: s["input"]} for s in samples]
    expected = run_chain([model], samples, optimize=True)
    results = list(run(folder / "manifest.json", iter(samples), queue_size=1))
    assert len(results) == len(samples)
    for want, got in zip(expected, results):
        assert list(got) == ["logits"]
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)


def test_a_killed_worker_ends_the_run_with_an_error_naming_it_within_10_s(cnn_partition):
    model, folder = cnn_partition
    name = model.graph.input[0].name
    endless = ({name: s["input"]} for s in iter(lambda: _samples(1)[0], None))
    results = run(folder, endless)
    next(results)  # the pipeline is up and streaming
    workers = [p for p in multiprocessing.active_children() if p.name == "graphopt-stage-1"]
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(PipelineError, match="stage 1 worker was killed") as caught:
        for _ in results:
            assert time.monotonic() - start < 10
    assert caught.value.stage == 1
    assert time.monotonic() - start < 10
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("graphopt-stage-")]


def test_a_raising_stage_is_named_and_no_result_follows(cnn_partition):
    model, folder = cnn_partition
    name = model.graph.input[0].name
    samples = [{name: s["input"]} for s in _samples(3)]
    samples.insert(2, {name: np.zeros((1, 5, 32, 32), np.float32)})  # wrong channel count: stage 0 raises
    got = []
    with pytest.raises(PipelineError, match="stage 0 failed") as caught:
        for result in run(folder, samples):
            got.append(result)
    assert len(got) == 2 and caught.value.stage == 0


def test_an_input_iterable_that_raises_ends_the_run(cnn_partition):
    model, folder = cnn_partition
    name = model.graph.input[0].name

    def broken():
        yield {name: _samples(1)[0]["input"]}
        raise RuntimeError("camera unplugged")

    with pytest.raises(PipelineError, match="camera unplugged"):
        list(run(folder, broken()))
    with pytest.raises(PipelineError, match="reading the inputs failed"):
        list(run(folder, [{name: _samples(1)[0]["input"]}, ["not", "a", "mapping"]]))


def test_shapes_that_change_between_samples_come_back_right_and_the_stats_add_up(tmp_path):
    import trait_models
    from graphopt.partition import partition_to_dir

    model = trait_models.dynamic_cnn()
    partition_to_dir(model, tmp_path / "stages", stages=2, by="macs", input_shapes={"image": [1, 3, 32, 32]})
    rng = np.random.default_rng(3)
    sides = [32, 96, 16, 64, 200, 24, 96]  # the slots grow and the shapes shrink again between samples
    samples = [{"image": rng.standard_normal((1 + i % 2, 3, side, side)).astype(np.float32)} for i, side in enumerate(sides)]
    expected = run_chain([model], samples, optimize=True)
    stats: dict = {}
    results = list(run(tmp_path / "stages", samples, queue_size=1, stats=stats))
    assert [r["logits"].shape for r in results] == [(1 + i % 2, 10) for i in range(len(sides))]
    for want, got in zip(expected, results):
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
        assert got["logits"].flags.writeable and got["logits"].flags.owndata  # the caller's own copy
    assert stats["samples"] == len(samples) and [s["stage"] for s in stats["stages"]] == [0, 1]
    assert all(s["samples"] == len(samples) and s["run_ms"] > 0 and s["transport_cpu_ms"] >= 0 for s in stats["stages"])
    assert stats["driver_cpu_ms"] > 0


def test_a_finished_run_leaves_no_shared_memory_and_no_workers(cnn_partition):
    import glob

    model, folder = cnn_partition
    name = model.graph.input[0].name
    before = set(glob.glob("/dev/shm/graphopt_*"))
    results = run(folder, [{name: s["input"]} for s in _samples(4)])
    next(results)
    ours = set(glob.glob("/dev/shm/graphopt_*")) - before
    assert ours  # the rings are in use
    results.close()  # the caller stops early
    assert not ours & set(glob.glob("/dev/shm/graphopt_*"))
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("graphopt-stage-")]
