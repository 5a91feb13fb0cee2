"""`graphopt.pipeline_runner.run(manifest, inputs)`: a partitioned model, pipelined (see graphopt.partition.runner)."""

from graphopt.partition.runner import BACKENDS, PipelineError, run

__all__ = ["run", "PipelineError", "BACKENDS"]
