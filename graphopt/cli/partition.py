"""`graphopt partition`, `graphopt run`, and `graphopt optimize --partition K`.

`add_commands(commands, common)` adds them to the CLI's subparsers; the handlers raise
GraphoptError subclasses, which the CLI turns into its one-line errors and exit codes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from graphopt.errors import GraphoptError, InputError, UsageError
from graphopt.verify.feeds import parse_input_shape
from graphopt.writable import atomic_write, require_writable_folder

__all__ = ["add_commands"]


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    """Adds `partition` and `run`, and `--partition K` to the existing `optimize`."""
    from graphopt.partition.api import COST_MODELS, DEFAULT_CUT_WEIGHT

    partition = commands.add_parser("partition", parents=[common], help="cut a model into pipeline stages (stage_i.onnx + manifest.json)")
    partition.add_argument("model", help="the .onnx model to cut (never modified)")
    partition.add_argument("--stages", type=int, required=True, metavar="K", help="number of pipeline stages")
    partition.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for stage_*.onnx and manifest.json")
    _add_partition_options(partition, COST_MODELS, DEFAULT_CUT_WEIGHT)
    partition.add_argument("--inputs", help=".npz with one (N, *shape) array per model input, for verification")
    partition.add_argument("--calibration", help=".npz like --inputs (used when --inputs is not given)")
    partition.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS", help="shape of a dynamic input")
    partition.add_argument("--report", help="write the JSON report here")
    partition.add_argument("--seed", type=int, default=0, help="random seed for generated inputs")
    partition.set_defaults(handler=_partition)

    run = commands.add_parser("run", parents=[common], help="run a partitioned model pipelined, one worker per stage")
    run.add_argument("folder", metavar="DIR", help="a folder written by `graphopt partition`")
    run.add_argument("--inputs", required=True, help=".npz with one (N, *shape) array per model input: N samples")
    run.add_argument("--backend", choices=("local", "ray"), default="local", help="local processes (default) or Ray actors")
    run.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here, one (N, *shape) array each")
    run.add_argument("--threads", type=int, help="intra-op threads per stage (default: the manifest's)")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds without progress before the run fails")
    run.add_argument("--samples-per-call", type=int, metavar="N",
                     help="ray: samples one actor call carries (default: ~0.4 s of the slowest stage's work)")
    run.set_defaults(handler=_run)

    optimize = commands.choices["optimize"]
    optimize.add_argument("--partition", type=int, metavar="K", help="cut the optimized model into K stages; -o is then a folder")
    _add_partition_options(optimize, COST_MODELS, DEFAULT_CUT_WEIGHT, prefix="partition-")
    optimize.set_defaults(handler=_optimize_then_partition(optimize.get_default("handler")))


def _add_partition_options(parser, cost_models, default_weight, prefix: str = "") -> None:
    parser.add_argument(f"--{prefix}by", dest="by", choices=cost_models, default="latency",
                        help="stage cost: measured 1-thread onnxruntime latency (default) or MACs")
    parser.add_argument(f"--{prefix}cut-weight", dest="cut_weight", type=float, default=default_weight,
                        help=f"weight of each MiB crossing a cut, as a share of the whole model's cost (default {default_weight})")
    parser.add_argument(f"--{prefix}max-stage-bytes", dest="max_stage_bytes", type=int, metavar="N",
                        help="cap on the weight bytes of each stage")
    parser.add_argument(f"--{prefix}threads", dest="stage_threads", type=int, default=1,
                        help="intra-op threads per stage worker, recorded in the manifest (default 1)")


def _settings(args) -> dict:
    return {"by": args.by, "cut_weight": args.cut_weight, "max_stage_bytes": args.max_stage_bytes, "inputs": args.inputs,
            "calibration": args.calibration, "input_shapes": dict(parse_input_shape(item) for item in args.input_shape),
            "seed": args.seed, "threads": args.stage_threads}


def _partition(args) -> int:
    from graphopt.partition.api import partition
    from graphopt.partition.manifest import check_output_dir, write_partition

    source, folder = Path(args.model), Path(args.output)
    check_output_dir(folder, source)
    if args.report:
        require_writable_folder(Path(args.report), "report")
    if not source.is_file():
        raise InputError("model file does not exist", path=str(source))
    try:
        result = partition(str(source), args.stages, **_settings(args))
    except GraphoptError as error:
        if error.path is None and not isinstance(error, UsageError):
            error.path = str(source)
        raise
    write_partition(folder, result.stages, result.manifest)
    if args.report:
        _write_json(Path(args.report), result.report)
    if not args.quiet:
        print(_summary(folder, result.manifest))
    return 0


def _summary(folder: Path, manifest: dict) -> str:
    verification = manifest["verification"]
    lines = [f"wrote {folder}: {len(manifest['stages'])} stages, cuts at nodes {manifest['plan']['cuts']}, "
             f"slowest stage {manifest['balance']['slowest_over_ideal']:.3f}x the ideal, "
             f"{sum(manifest['plan']['cut_bytes']):,} bytes crossing"]
    for stage in manifest["stages"]:
        lines.append(f"  {stage['file']}: {stage['nodes']} nodes, {stage['cost_share']:.1%} of the cost, "
                     f"{stage['weight_bytes']:,} weight bytes, {stage['bytes_out']:,} bytes out"
                     + (f", passes through {', '.join(stage['pass_through'])}" if stage["pass_through"] else ""))
    lines.append(f"chain verified on {verification['samples']} {verification['inputs']} sample(s): "
                 + ("bit-exact" if verification["bit_exact"] else "within the lossless tolerance"))
    return "\n".join(lines)


def _run(args) -> int:
    import numpy as np

    from graphopt.partition.manifest import load_manifest
    from graphopt.partition.runner import run
    from graphopt.verify.feeds import split_samples

    if args.output:
        require_writable_folder(Path(args.output), "output")
    manifest, _ = load_manifest(args.folder)
    feeds = _model_inputs(Path(args.inputs), [value["name"] for value in manifest["model"]["inputs"]])
    samples = split_samples(feeds)
    start = time.perf_counter()
    if args.samples_per_call is not None and args.samples_per_call < 1:
        raise UsageError(f"--samples-per-call must be at least 1, got {args.samples_per_call}")
    results = list(run(args.folder, samples, backend=args.backend, threads=args.threads, timeout=args.timeout,
                       samples_per_call=args.samples_per_call))
    seconds = time.perf_counter() - start
    stacked = {name: np.stack([result[name] for result in results]) for name in results[0]} if results else {}
    if args.output:
        _write_npz(Path(args.output), stacked)
    if not args.quiet:
        print(f"ran {len(results)} samples through {len(manifest['stages'])} stages ({args.backend}) in {seconds:.2f} s, "
              f"{len(results) / seconds:.2f} samples/s (worker start-up included)")
        for name, array in stacked.items():
            print(f"  output {name}: {array.dtype} {list(array.shape)}")
        if args.output:
            print(f"wrote {args.output}")
    return 0


def _optimize_then_partition(optimize_handler):
    """`optimize` as usual into a scratch file, then that file partitioned into `-o DIR`."""

    def handler(args) -> int:
        if args.partition is None:
            return optimize_handler(args)
        from graphopt.partition.manifest import check_output_dir

        if not args.output:
            raise UsageError("--partition needs -o DIR, the folder for the stages")
        folder = Path(args.output)
        check_output_dir(folder, Path(args.model))
        quiet = args.quiet
        with tempfile.TemporaryDirectory(prefix="graphopt-optimized-") as scratch:
            args.output, args.quiet = str(Path(scratch) / "optimized.onnx"), True
            optimize_handler(args)
            args.model, args.output, args.quiet, args.stages = args.output, str(folder), quiet, args.partition
            report_path = args.report
            args.report = None
            code = _partition(args)
        if report_path:
            report = json.loads(Path(report_path).read_text())
            from graphopt.partition.manifest import load_manifest

            report["partition"] = load_manifest(folder)[0]
            _write_json(Path(report_path), report)
        return code

    return handler


def _model_inputs(path: Path, names: list[str]) -> dict:
    from graphopt.verify.feeds import read_npz

    arrays = read_npz(path, "--inputs")
    missing = sorted(set(names) - set(arrays))
    if missing:
        raise InputError(f"--inputs has no array for model input {', '.join(map(repr, missing))}", path=str(path))
    feeds = {name: arrays[name] for name in names}
    if len({array.shape[0] if array.ndim else None for array in feeds.values()}) != 1 or any(a.ndim == 0 for a in feeds.values()):
        raise InputError("--inputs arrays must all be shaped (N, *input_shape) with the same N", path=str(path))
    return feeds


def _write_json(path: Path, document: dict) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(document, indent=2, default=str) + "\n").encode()))


def _write_npz(path: Path, arrays: dict) -> None:
    import numpy as np

    atomic_write(path, lambda handle: np.savez(handle, **arrays))
