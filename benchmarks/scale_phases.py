"""The phases of one `cleanup,fuse` run, timed in-process as the pipeline runs them.

    python benchmarks/scale_phases.py MODEL.onnx   # prints {"seconds": {phase: CPU s}, "nodes": n}

Phases summed over both passes: load (read + confinement + check), shape inference, import,
cleanup, fuse, export, check, verification (ORT sessions on one generated sample), report
sizes (input/output summaries and per-pass byte counts).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

from graphopt import convert, graph_queries
from graphopt.model import check_model, infer_model_shapes
from graphopt.model_io import load_model
from graphopt.passes import PassContext
from graphopt.registry import load_registry
from graphopt.summary import model_bytes, summarize
from graphopt.verify import Verifier, generate_feeds, split_samples

seconds: dict[str, float] = defaultdict(float)


@contextmanager
def phase(name: str):
    start = time.process_time()  # CPU time: the machine is shared, wall time is noisy
    yield
    seconds[name] += time.process_time() - start


def main(path: str) -> None:
    with phase("load"):
        pristine = load_model(path, infer_shapes=False)
    with phase("shape inference"):
        model = infer_model_shapes(pristine)
    verifier = Verifier(split_samples(generate_feeds(model)))
    with phase("verification"):
        reference = verifier.outputs(model)
    registry = load_registry().registry
    for name in ("cleanup", "fuse"):
        pass_ = registry.get(name)()
        with phase("import"):
            graph = convert.import_graph(model)
        with phase(name):
            result = pass_.run(graph, PassContext(opset=graph_queries.opset_version(graph) or 0, model=model, logger=logging.getLogger("x")))
        if not result.changed:
            continue
        with phase("export"):
            candidate = convert.export_model(graph, model)
        with phase("shape inference"):
            candidate = infer_model_shapes(candidate)
        with phase("check"):
            check_model(candidate, full=True)
        with phase("verification"):
            verdict = verifier.judge(reference, verifier.outputs(candidate), budget=None)
        assert verdict.ok, verdict.summary()
        with phase("report sizes"):
            model_bytes(model), model_bytes(candidate)
        model = candidate
    with phase("report sizes"):
        summarize(pristine), summarize(model)
    print(json.dumps({"seconds": {k: round(v, 3) for k, v in seconds.items()}, "nodes": len(pristine.graph.node),
                      "nodes_after": len(model.graph.node)}))


if __name__ == "__main__":
    main(sys.argv[1])
