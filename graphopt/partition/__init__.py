"""Model parallelism: a model cut into pipeline stages (`partition`) and run pipelined (`runner.run`).

See docs/partition.md for the cut rules, the manifest format and the runner's backends.
"""

from graphopt.partition.api import COST_MODELS, DEFAULT_CUT_WEIGHT, Partition, partition, partition_to_dir
from graphopt.partition.manifest import MANIFEST_SCHEMA, load_manifest

__all__ = ["partition", "partition_to_dir", "Partition", "COST_MODELS", "DEFAULT_CUT_WEIGHT", "MANIFEST_SCHEMA", "load_manifest"]
