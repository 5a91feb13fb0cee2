"""`graphopt bench`: median latency of one or more models in onnxruntime."""

from __future__ import annotations

import json

from graphopt.errors import InputError, UsageError

__all__ = ["register", "run"]


def register(commands, common) -> None:
    """Adds the `bench` command to the `graphopt` parser."""
    parser = commands.add_parser("bench", parents=[common], help="median latency in onnxruntime")
    parser.add_argument("models", nargs="+", help="one or more .onnx models, timed one after another")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: a phone's big core)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs after warm-up; the median is reported")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS", help="shape of a dynamic input")
    parser.add_argument("--inputs", help=".npz of inputs; the first sample is used")
    parser.add_argument("--json", action="store_true", help="latency figures as JSON")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from graphopt.api import prepare_feeds
    from graphopt.bench import compare_latency
    from graphopt.model_io import load_model
    from graphopt.errors import first_line
    from graphopt.cli.optimize import generated_feeds
    from graphopt.verify import SessionError, split_samples
    from graphopt.verify.feeds import parse_input_shape
    from graphopt.verify.runner import make_session

    if args.threads < 1 or args.runs < 1:
        raise UsageError("--threads and --runs must be at least 1")
    shapes = dict(parse_input_shape(item) for item in args.input_shape)
    samples = {}
    for path in args.models:
        model = load_model(path, infer_shapes=False)
        feeds = prepare_feeds(args.inputs, model) if args.inputs else generated_feeds(model, shapes, 0, args.json, f"{path}: timed")
        samples[path] = split_samples(feeds)[0]
        try:
            make_session(path)  # a model ORT cannot load is named here, before any timing
        except SessionError as error:
            raise InputError(f"onnxruntime cannot run the model: {error}", path=path) from error
    try:
        timings = compare_latency({path: path for path in samples}, samples, threads=args.threads, runs=args.runs)
    except SessionError as error:
        raise InputError(f"onnxruntime cannot run a model: {error}") from error
    except Exception as error:  # ORT raises its own types when a model fails on its inputs
        raise InputError(f"onnxruntime cannot run a model on its inputs: {first_line(error)}") from error
    rows = [{"model": path, **timing} for path, timing in timings.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            versus = f", {row['ratio']:.2f}x the first" if len(rows) > 1 and row is not rows[0] else ""
            print(f"{row['model']}: median {row['median_ms']:.3f} ms (min {row['min_ms']:.3f}, p90 {row['p90_ms']:.3f}; "
                  f"{row['runs']} runs, {row['threads']} thread{'s' if row['threads'] > 1 else ''}{versus})")
    return 0
