"""The `graphopt` command line: optimize, passes, inspect, verify, bench (and partition, run).

Errors are one line on stderr, `graphopt: error: <what> (<file>)`, with the exit codes of
DESIGN.md (0 done, 1 verification failed, 2 bad usage or input, 3 a pass or plugin failed);
`--debug` adds the traceback. Only this module prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import contextlib
import inspect
import os
import sys
import tempfile
import traceback
from pathlib import Path

from graphopt import __version__
from graphopt.errors import GraphoptError, InputError, UsageError, VerificationError
from graphopt.model_io import same_file
from graphopt.emit.cli_args import add_target_arguments, default_suffix, describe_emit, target_settings
from graphopt.options import describe_options, parse_assignment
from graphopt.parameter_names import cli_spelling
from graphopt.writable import require_writable_folder
from graphopt.partition.commands import add_commands as add_partition_commands
from graphopt.verify.feeds import parse_input_shape

__all__ = ["main"]

logger = logging.getLogger("graphopt")


class _Parser(argparse.ArgumentParser):
    """argparse, but its usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str):
        raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        with _logging_for(args), cli_spelling():
            return args.handler(args)
    except GraphoptError as error:
        return _fail(error, error.exit_code, debug)
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`graphopt passes | head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # a bug of ours: still one line, still a documented code
        return _fail(f"internal error: {type(error).__name__}: {error}", 3, debug)


def _fail(error, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    # One line, whatever the message: a plugin's exception text may span several.
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    print(f"graphopt: error: {text}", file=sys.stderr)
    return code


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="log debug detail and print tracebacks")
    common.add_argument("--quiet", action="store_true", help="print only errors; no progress bar")
    parser = _Parser(prog="graphopt", description="Plugin-based graph optimization compiler for ONNX.")
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    optimize = commands.add_parser("optimize", parents=[common], help="run passes over a model and write the result")
    optimize.add_argument("model", help="the .onnx model to optimize (never overwritten)")
    optimize.add_argument("-o", "--output", help="output path (default: MODEL with .opt.onnx)")
    optimize.add_argument("--passes", help="comma-separated pass names, run in order (default: cleanup)")
    optimize.add_argument("--set", dest="assignments", action="append", default=[], metavar="PASS.OPTION=VALUE",
                          help="set a pass option (repeatable); `graphopt passes` lists them")
    optimize.add_argument("--recipe", help="TOML file with passes, options and budget")
    optimize.add_argument("--inputs", help=".npz with one (N, *shape) array per model input, for verification")
    optimize.add_argument("--calibration", help=(
        "calibration data for passes that calibrate: an .npz with one (N, *input_shape) array per input "
        "(e.g. images of shape (32, 1, 3, 640, 640) for an input images (batch, 3, 640, 640): 32 samples of batch 1), "
        "or a folder of .npy/.npz files (one sample each) or of images (preprocessing in the recipe's [calibration] "
        "table: resize, scale, mean, std, layout, channels)"))
    optimize.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                          help="shape of a dynamic input for verification (default: chosen, see docs/verifier.md)")
    optimize.add_argument("--freeze-shapes", action="store_true",
                          help="write the verified input shapes (given or chosen) into the output instead of keeping dims dynamic")
    optimize.add_argument("--verify", choices=("each", "end", "off"), help="verify after each pass (default), at the end, or not")
    optimize.add_argument("--report", help="write the JSON report here")
    optimize.add_argument("--budget", help="end-to-end accuracy budget of lossy passes, e.g. cos=0.99 or sqnr=30; "
                          "cos and sqnr hold for every sample")
    optimize.add_argument("--evaluator", metavar="PACKAGE.MODULE:FUNCTION",
                          help="your task metric: function(model_path, inputs) -> score, held to --budget score=-1%% "
                          "(relative drop) or score>=0.75; the working folder is importable")
    optimize.add_argument("--budget-slices", action="append", default=[], metavar="NAME[@AXIS]=START:STOP,...",
                          help="parts of an output the budget also holds on, e.g. output0@1=0:4,4: (repeatable; "
                          "a Concat-built output, as a detector's boxes and scores, is sliced by itself)")
    optimize.add_argument("--external-data", action="store_true", help="write weights to MODEL.data beside the output")
    optimize.add_argument("--keep-going", action="store_true", help="roll back a failing pass and go on")
    optimize.add_argument("--dump-dir", help="write the model after each pass here as NN_pass.onnx")
    optimize.add_argument("--seed", type=int, default=0, help="random seed for generated inputs and passes")
    add_target_arguments(optimize)
    optimize.set_defaults(handler=_optimize)

    passes = commands.add_parser("passes", parents=[common], help="list registered passes and their options")
    passes.add_argument("--json", action="store_true", help="machine-readable listing, with plugin warnings")
    passes.add_argument("--markdown", action="store_true", help="the passes reference as Markdown")
    passes.add_argument("--plugin", action="append", default=[], metavar="NAME",
                        help="only the passes of this plugin (repeatable)")
    passes.set_defaults(handler=_passes)

    inspect = commands.add_parser("inspect", parents=[common], help="ops, parameters, bytes, MACs, opset, inputs/outputs")
    inspect.add_argument("model", help="the .onnx model")
    inspect.add_argument("--json", action="store_true", help="the summary as JSON")
    inspect.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                         help="count MACs at this input shape (default: chosen, as optimize does)")
    inspect.set_defaults(handler=_inspect)

    verify = commands.add_parser("verify", parents=[common], help="compare a candidate model's outputs with a reference's")
    verify.add_argument("reference", help="the model taken as right")
    verify.add_argument("candidate", help="the model judged against it")
    verify.add_argument("--inputs", help=".npz with one (N, *shape) array per model input (default: generated)")
    verify.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS", help="shape of a dynamic input")
    verify.add_argument("--budget", help="judge against this budget instead of the lossless tolerance; "
                        "cos and sqnr hold for every sample (the worst sample is compared)")
    verify.add_argument("--budget-slices", action="append", default=[], metavar="NAME[@AXIS]=START:STOP,...",
                        help="parts of an output the budget also holds on (as for optimize)")
    verify.add_argument("--seed", type=int, default=0, help="random seed for generated inputs")
    verify.add_argument("--json", action="store_true", help="metrics per output as JSON")
    verify.add_argument("--per-tensor", action="store_true", help="also SQNR and cosine of every tensor both models share, worst first")
    verify.set_defaults(handler=_verify)

    bench = commands.add_parser("bench", parents=[common], help="median latency in onnxruntime")
    bench.add_argument("models", nargs="+", help="one or more .onnx models, timed one after another")
    bench.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: a phone's big core)")
    bench.add_argument("--runs", type=int, default=50, help="timed runs after warm-up; the median is reported")
    bench.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS", help="shape of a dynamic input")
    bench.add_argument("--inputs", help=".npz of inputs; the first sample is used")
    bench.add_argument("--json", action="store_true", help="latency figures as JSON")
    bench.set_defaults(handler=_bench)
    add_partition_commands(commands, common)  # partition, run, and optimize --partition K
    return parser


@contextlib.contextmanager
def _logging_for(args):
    """Our loggers print to stderr at the level the flags ask for, for this command only.

    The previous state is put back afterwards, so `main()` called in-process (embedding,
    tests) leaves the host's logging as it found it.
    """
    level = logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("graphopt: %(levelname)s: %(message)s"))
    # First-party plugins log under graphopt_plugins.* (their module names); show them alike.
    loggers = [logging.getLogger(name) for name in ("graphopt", "graphopt_plugins")]
    saved = [(list(each.handlers), each.level, each.propagate) for each in loggers]
    for each in loggers:
        each.handlers[:] = [handler]
        each.setLevel(level)
        each.propagate = False
    try:
        yield
    finally:
        for each, (handlers, previous_level, propagate) in zip(loggers, saved):
            each.handlers[:] = handlers
            each.setLevel(previous_level)
            each.propagate = propagate


def _optimize(args) -> int:
    from graphopt.api import optimize_to_file  # heavy imports only for the commands that need them
    from graphopt.summary import format_comparison

    source = Path(args.model)
    recipe = _read_recipe(Path(args.recipe)) if args.recipe else {}
    # Flags win over the recipe; what is left of it is one options table per pass.
    recipe_passes, recipe_budget, recipe_verify = (recipe.pop(key, None) for key in ("passes", "budget", "verify"))
    calibration = _calibration_source(args.calibration, recipe.pop("calibration", None), args.recipe)
    passes = args.passes if args.passes is not None else recipe_passes or "cleanup"
    if isinstance(passes, list):
        passes = ",".join(passes)
    budget = args.budget if args.budget is not None else recipe_budget
    verify = args.verify or recipe_verify or "each"
    output = Path(args.output) if args.output else _default_output(source, default_suffix(args))
    _check_output_path(output, source)
    if args.report:
        _check_report_path(Path(args.report), source, output)
    text_options: dict[str, dict[str, str]] = {}
    for assignment in args.assignments:
        pass_name, option, value = parse_assignment(assignment)
        text_options.setdefault(pass_name, {})[option] = value
    progress = not args.quiet and sys.stderr.isatty()
    try:
        report = optimize_to_file(
            str(source),
            output,
            passes=passes,
            external_data=args.external_data,
            options=recipe,
            set_options=text_options,
            inputs=args.inputs,
            calibration=calibration,
            verify=verify,
            budget=budget,
            input_shapes=dict(parse_input_shape(item) for item in args.input_shape),
            keep_going=args.keep_going,
            seed=args.seed,
            dump_dir=args.dump_dir,
            progress=progress,
            budget_slices=args.budget_slices,
            evaluator=args.evaluator,
            freeze_shapes=args.freeze_shapes,
            **target_settings(args),
        )
    except GraphoptError as error:
        if error.path is None and not isinstance(error, UsageError):
            error.path = str(source)  # DESIGN: `graphopt: error: <what> (<file>)`
        if isinstance(error, VerificationError) and args.report and error.report is not None:
            _write_json(Path(args.report), {"schema": "graphopt.report/1", "failed": error.message, **error.report})
        raise
    if args.report:
        _write_json(Path(args.report), report)
    if not args.quiet:
        print(f"wrote {output}")
        _print_chosen_shapes(report["verification"].get("shapes", {}), verb="froze" if args.freeze_shapes else "verified")
        print(format_comparison(report["input"], report["output"]))
        if describe_emit(report):
            print(describe_emit(report))
        for entry in report["passes"]:
            details = _brief(entry["details"])
            print(f"pass {entry['name']}: {entry['status']} in {entry['seconds']:.3f}s" + (f" ({details})" if details else ""))
    return 0


def _print_chosen_shapes(shapes: dict, *, verb: str) -> None:
    for name, entry in shapes.items():
        chosen = [dim["reason"] for dim in entry["dims"] if "→" in dim["reason"]]  # the dims graphopt chose
        if chosen:
            size = "x".join(map(str, entry["shape"]))
            print(f"{verb} input '{name}' at {size}: {'; '.join(chosen)}")


def _default_output(source: Path, suffix: str = ".opt.onnx") -> Path:
    stem = source.name[: -len(".onnx")] if source.name.endswith(".onnx") else source.name
    return source.with_name(f"{stem}{suffix}")


def _check_output_path(output: Path, source: Path) -> None:
    """Refuses early, before any work, what save_model would refuse at the end."""
    if same_file(output, source):
        raise UsageError("output would overwrite the input; choose another -o", path=str(output))
    require_writable_folder(output, "output")


def _check_report_path(report: Path, source: Path, output: Path) -> None:
    """Refuses early a report that could not be written, or that would replace the input or the output."""
    require_writable_folder(report, "report")
    for other, what in ((source, "the input"), (output, "the output")):
        if same_file(report, other):
            raise UsageError(f"--report would overwrite {what}; choose another path", path=str(report))


def _calibration_source(given: str | None, table: dict | None, recipe: str | None):
    """--calibration as given, or a folder of samples with the recipe's [calibration] preprocessing."""
    from graphopt.verify.calibration_sources import CalibrationFolder, Preprocessing

    if given is None or not Path(given).is_dir():
        return given
    return CalibrationFolder(Path(given), Preprocessing.from_table(table, recipe))


def _read_recipe(path: Path) -> dict:
    """A TOML recipe: `passes`, `budget`, `verify` at the top; one `[PASS]` table of options per pass."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        recipe = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise InputError("recipe file does not exist", path=str(path)) from error
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"recipe is not valid TOML: {error}", path=str(path)) from error
    for key, value in recipe.items():
        if key not in ("passes", "budget", "verify") and not isinstance(value, dict):
            raise InputError(f"recipe key '{key}' is neither passes, budget, verify nor a [pass] table", path=str(path))
    passes = recipe.get("passes")
    if passes is not None and not (isinstance(passes, str) or (isinstance(passes, list) and all(isinstance(p, str) for p in passes))):
        raise InputError("recipe 'passes' must be a list of pass names or a comma-separated string", path=str(path))
    for key in ("budget", "verify"):
        if key in recipe and not isinstance(recipe[key], str):
            raise InputError(f"recipe '{key}' must be a string, like budget = \"cos=0.99\" or verify = \"each\"", path=str(path))
    return recipe


def _write_json(path: Path, document: dict) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError("report folder does not exist", path=str(path))
    staged = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
            staged = handle.name
            json.dump(document, handle, indent=2, default=str)
            handle.write("\n")
        # NamedTemporaryFile makes the file 0600; a report is an ordinary file (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o666 & ~umask)
        os.replace(staged, path)
    except OSError as error:
        if staged is not None and os.path.exists(staged):
            os.unlink(staged)
        raise UsageError(f"cannot write the report in folder '{folder}': {error.strerror or error}", path=str(path)) from error


def _passes(args) -> int:
    from graphopt.registry import load_registry

    loaded = load_registry()
    registry = loaded.registry
    listing = []
    unknown = sorted(set(args.plugin) - {registry.plugin_of(name) for name in registry.names()})
    if unknown:
        raise UsageError(f"no installed plugin named {', '.join(unknown)}")
    for name in registry.names():
        if args.plugin and registry.plugin_of(name) not in args.plugin:
            continue
        cls = registry.get(name)
        listing.append({
            "name": name,
            "plugin": registry.plugin_of(name),
            "description": cls.description(),
            "doc": _doc_body(cls),
            "lossless": cls.lossless,
            "after": list(cls.after),
            "before": list(cls.before),
            "options": [
                {"name": o.name, "type": o.type, "default": o.default, "help": o.help} for o in describe_options(cls.Options)
            ],
        })
    if args.json:
        print(json.dumps({"passes": listing, "warnings": loaded.warnings}, indent=2, default=str))
    elif args.markdown:
        command = "graphopt passes --markdown" + "".join(f" --plugin {name}" for name in args.plugin)
        print(_passes_markdown(listing, command))
    else:
        for entry in listing:
            kind = "lossless" if entry["lossless"] else "lossy"
            print(f"{entry['name']}  [{entry['plugin']}, {kind}]  {entry['description']}")
            for option in entry["options"]:
                print(f"    {option['name']} ({option['type']}, default {option['default']!r})  {option['help']}")
    return 0


def _brief(details: dict) -> str:
    """A pass's stats on one line: scalars as they are, tables (per-layer lists) by their length."""
    parts = []
    for key, value in details.items():
        if isinstance(value, (list, tuple, dict)):
            if value:
                parts.append(f"{key}: {len(value)} rows in the report")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif value:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _doc_body(cls) -> str:
    """A pass's docstring after its first line: what it rewrites, what it refuses, its tolerance."""
    return inspect.cleandoc(cls.__doc__ or "").partition("\n")[2].strip()


def _passes_markdown(listing: list[dict], command: str = "graphopt passes --markdown") -> str:
    lines = ["# Passes", "", f"Generated by `{command}`.", ""]
    for entry in listing:
        kind = "lossless" if entry["lossless"] else "lossy"
        lines += [f"## `{entry['name']}`", "", f"{entry['description']} (plugin `{entry['plugin']}`, {kind})", ""]
        if entry["doc"]:
            lines += [entry["doc"], ""]
        order = [f"after {', '.join(entry['after'])}"] if entry["after"] else []
        order += [f"before {', '.join(entry['before'])}"] if entry["before"] else []
        if order:
            lines += [f"Runs {' and '.join(order)} when both are asked for.", ""]
        if entry["options"]:
            lines += ["| option | type | default | help |", "|---|---|---|---|"]
            lines += [f"| `{o['name']}` | {o['type']} | `{o['default']!r}` | {o['help']} |" for o in entry["options"]]
            lines.append("")
    return "\n".join(lines)


def _inspect(args) -> int:
    from graphopt.model_io import load_model
    from graphopt.shaped_summary import summarize_at_shapes

    stored = load_model(args.model, infer_shapes=False)
    shapes = dict(parse_input_shape(item) for item in args.input_shape)
    summary = summarize_at_shapes(stored, shapes)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.model}: {summary['nodes']} nodes, {summary['parameters']:,} parameters, "
          f"{summary['bytes']:,} bytes, {summary['macs']:,} MACs, IR {summary['ir_version']}, opset {summary['opset']}")
    for value in summary["inputs"]:
        print(f"  input  {value['name']}: {value['dtype']} {value['shape']}")
    for value in summary["outputs"]:
        print(f"  output {value['name']}: {value['dtype']} {value['shape']}")
    print("  ops: " + ", ".join(f"{op} {count}" for op, count in summary["ops"].items()))
    for name, entry in summary.get("macs_shapes", {}).items():
        print(f"  MACs counted at {name}={'x'.join(map(str, entry['shape']))} ({entry['reason']})")
    if summary["macs_unknown"]:
        print("  MACs not counted (shapes unknown): " + ", ".join(f"{op} {n}" for op, n in summary["macs_unknown"].items()))
    return 0


_PER_TENSOR_ROWS = 30  # `verify --per-tensor` lists this many tensors, worst first


def _verify(args) -> int:
    from graphopt.api import prepare_feeds
    from graphopt.model_io import load_model
    from graphopt.verify import Budget, SessionError, Verifier, input_specs, split_samples
    from graphopt.verify.slices import output_slices
    from graphopt.verify.tensor_errors import per_tensor_errors

    reference, candidate = load_model(args.reference), load_model(args.candidate)
    interface = {spec.name: spec.dtype for spec in input_specs(reference)}
    if {spec.name: spec.dtype for spec in input_specs(candidate)} != interface:
        raise InputError("the candidate's inputs differ from the reference's (names or dtypes)", path=args.candidate)
    shapes = dict(parse_input_shape(item) for item in args.input_shape)
    feeds = prepare_feeds(args.inputs, reference) if args.inputs else _generated_feeds(reference, shapes, args.seed, args.json, "verified")
    verifier = Verifier(split_samples(feeds), output_slices(reference, args.budget_slices, feeds))
    budget = Budget.parse(args.budget)
    outputs = {}
    for label, model, path in (("reference", reference, args.reference), ("candidate", candidate, args.candidate)):
        try:
            outputs[label] = verifier.outputs(model)
        except SessionError as error:
            raise InputError(f"onnxruntime cannot run the {label}: {error}", path=path) from error
    verdict = verifier.judge(outputs["reference"], outputs["candidate"], budget=budget)
    if not verdict.ok:
        verdict.first_divergence = verifier.localize(reference, candidate, budget=budget)
    tensors = per_tensor_errors(reference, candidate, feeds, limit=_PER_TENSOR_ROWS) if args.per_tensor else None
    if args.json:
        print(json.dumps({**verdict.to_dict(), **({"per_tensor": tensors} if tensors is not None else {})}, indent=2, default=str))
    else:
        for name, metrics in verdict.outputs.items():
            print(f"{name}: {_sample_figures(metrics)}, max abs {metrics['max_abs']}, "
                  f"max rel {metrics['max_rel']}, {'ok' if metrics['within'] else 'FAILED'}")
        if verdict.first_divergence:
            where = verdict.first_divergence
            print(f"first divergence: node '{where['node']}' ({where['op']}), tensor '{where['tensor']}'")
        for row in tensors or []:
            print(f"tensor {row['tensor']}: SQNR {row['sqnr_db']:.2f} dB, cosine {row['cosine']:.6f}, max abs {row['max_abs']:.4g}")
    if not verdict.ok:
        raise VerificationError(f"candidate disagrees with reference: {verdict.summary()}", path=args.candidate)
    return 0


def _generated_feeds(model, shapes: dict, seed: int, quiet: bool, verb: str) -> dict:
    """Generated inputs at the given shapes, dims not given chosen and confirmed in onnxruntime."""
    from graphopt.verify import generate_feeds
    from graphopt.verify.input_shapes import confirmed_shapes

    chosen = confirmed_shapes(model, shapes, seed=seed)
    if not quiet:
        _print_chosen_shapes({name: c.to_dict() for name, c in chosen.items()}, verb=verb)
    return generate_feeds(model, {name: c.shape for name, c in chosen.items()}, seed=seed)


def _bench(args) -> int:
    from graphopt.api import prepare_feeds
    from graphopt.bench import compare_latency
    from graphopt.model_io import load_model
    from graphopt.errors import first_line
    from graphopt.verify import SessionError, split_samples
    from graphopt.verify.runner import make_session

    if args.threads < 1 or args.runs < 1:
        raise UsageError("--threads and --runs must be at least 1")
    shapes = dict(parse_input_shape(item) for item in args.input_shape)
    samples = {}
    for path in args.models:
        model = load_model(path, infer_shapes=False)
        feeds = prepare_feeds(args.inputs, model) if args.inputs else _generated_feeds(model, shapes, 0, args.json, f"{path}: timed")
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


if __name__ == "__main__":
    sys.exit(main())


def _sample_figures(metrics: dict) -> str:
    """Worst-sample cosine and SQNR, with mean and pooled beside them when measured per sample."""
    if "cosine_pooled" not in metrics:
        return f"cosine {metrics['cosine']}, SQNR {metrics['sqnr_db']} dB"
    return (f"cosine worst {metrics['cosine']} (sample {metrics['worst_sample']}), mean {metrics['cosine_mean']}, "
            f"pooled {metrics['cosine_pooled']}, SQNR worst {metrics['sqnr_db']} dB")
