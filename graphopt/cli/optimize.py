"""`graphopt optimize`: run passes over a model and write the result, with its report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from graphopt.emit.cli_args import add_target_arguments, default_suffix, describe_emit, target_settings
from graphopt.documents import read_document
from graphopt.errors import GraphoptError, InputError, UsageError, VerificationError
from graphopt.external_data import same_file
from graphopt.options import parse_assignment
from graphopt.writable import atomic_write, folder_of, require_writable_folder

__all__ = ["register", "run"]


def register(commands, common) -> None:
    """Adds the `optimize` command to the `graphopt` parser."""
    parser = commands.add_parser("optimize", parents=[common], help="run passes over a model and write the result")
    parser.add_argument("model", help="the .onnx model to optimize (never overwritten)")
    parser.add_argument("-o", "--output", help="output path (default: MODEL with .opt.onnx)")
    parser.add_argument("--passes", help="comma-separated pass names, run in order (default: cleanup)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="PASS.OPTION=VALUE",
                          help="set a pass option (repeatable); `graphopt passes` lists them")
    parser.add_argument("--recipe", help="TOML file with passes, options and budget")
    parser.add_argument("--inputs", help=".npz with one (N, *shape) array per model input, for verification")
    parser.add_argument("--calibration", help=(
        "calibration data for passes that calibrate: an .npz with one (N, *input_shape) array per input "
        "(e.g. images of shape (32, 1, 3, 640, 640) for an input images (batch, 3, 640, 640): 32 samples of batch 1), "
        "or a folder of .npy/.npz files (one sample each) or of images (preprocessing in the recipe's [calibration] "
        "table: resize, scale, mean, std, layout, channels)"))
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                        help="shape of a dynamic input for verification (default: chosen, see docs/verifier.md)")
    parser.add_argument("--freeze-shapes", action="store_true",
                        help="write the verified input shapes (given or chosen) into the output instead of keeping dims dynamic")
    parser.add_argument("--verify", choices=("each", "end", "off"), help="verify after each pass (default), at the end, or not")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--budget", help="end-to-end accuracy budget of lossy passes, e.g. cos=0.99 or sqnr=30; "
                        "cos and sqnr hold for every sample")
    parser.add_argument("--evaluator", metavar="PACKAGE.MODULE:FUNCTION",
                        help="your task metric: function(model_path, inputs) -> score, held to --budget score=-1%% "
                        "(relative drop) or score>=0.75; the working folder is importable")
    parser.add_argument("--budget-slices", action="append", default=[], metavar="NAME[@AXIS]=START:STOP,...",
                        help="parts of an output the budget also holds on, e.g. output0@1=0:4,4: (repeatable; "
                        "a Concat-built output, as a detector's boxes and scores, is sliced by itself)")
    parser.add_argument("--external-data", action="store_true", help="write weights to MODEL.data beside the output")
    parser.add_argument("--keep-going", action="store_true", help="roll back a failing pass and go on")
    parser.add_argument("--dump-dir", help="write the model after each pass here as NN_pass.onnx")
    parser.add_argument("--seed", type=int, default=0, help="random seed for generated inputs and passes")
    add_target_arguments(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from graphopt.api import optimize_to_file  # heavy imports only for the commands that need them
    from graphopt.report import REPORT_SCHEMA, pass_lines
    from graphopt.summary import format_comparison
    from graphopt.verify.feeds import parse_input_shape

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
    progress = not args.quiet and sys.stderr.isatty()  # docs/design.md: bars on a terminal only
    try:
        report = optimize_to_file(
            str(source), output, passes=passes, external_data=args.external_data, options=recipe,
            set_options=text_options, inputs=args.inputs, calibration=calibration, verify=verify, budget=budget,
            input_shapes=dict(parse_input_shape(item) for item in args.input_shape), keep_going=args.keep_going,
            seed=args.seed, dump_dir=args.dump_dir, progress=progress, budget_slices=args.budget_slices,
            evaluator=args.evaluator, freeze_shapes=args.freeze_shapes, **target_settings(args))
    except GraphoptError as error:
        if error.path is None and not isinstance(error, UsageError):
            error.path = str(source)  # docs/design.md: `graphopt: error: <what> (<file>)`
        if isinstance(error, VerificationError) and args.report and error.report is not None:
            _write_json(Path(args.report), {"schema": REPORT_SCHEMA, "failed": error.message, **error.report})
        raise
    if args.report:
        _write_json(Path(args.report), report)
    if not args.quiet:
        print(f"wrote {output}")
        print_chosen_shapes(report["verification"].get("shapes", {}), verb="froze" if args.freeze_shapes else "verified")
        if head := report["verification"].get("selection_head"):
            print(selection_line(head))
        print(format_comparison(report["input"], report["output"]))
        if describe_emit(report):
            print(describe_emit(report))
        for line in pass_lines(report):
            print(line)
        for warning in report["warnings"]:  # the run's warnings again, where the result is summed up
            print(f"warning: {warning}")
    return 0


def selection_line(head: dict) -> str:
    """What a run whose outputs come through a selection judged, and what the selection's flips cost."""
    line = (f"outputs {', '.join(head['outputs'])} come through {', '.join(head['selections'])}: lossy passes were judged on "
            f"{', '.join(repr(name) for name in head['judged_on'])}")
    for name, seen in (head.get("agreement") or {}).items():
        parts = [f"equal on {seen['equal_fraction']:.1%} of elements" if "equal_fraction" in seen else "",
                 f"worst cosine {seen['cosine']:.5f}" if "cosine" in seen else "",
                 f"shape differs on {seen['shape_differs']} of {seen['samples']} samples" if seen["shape_differs"] else ""]
        line += f"; {name}: {', '.join(part for part in parts if part)}"
    return line + (" (on the verifier's samples)" if head.get("agreement") else "")


def print_chosen_shapes(shapes: dict, *, verb: str) -> None:
    for name, entry in shapes.items():
        chosen = [dim["reason"] for dim in entry["dims"] if "→" in dim["reason"]]  # the dims graphopt chose
        if chosen:
            size = "x".join(map(str, entry["shape"]))
            print(f"{verb} input '{name}' at {size}: {'; '.join(chosen)}")


def generated_feeds(model, shapes: dict, seed: int, quiet: bool, verb: str) -> dict:
    """Generated inputs at the given shapes, dims not given chosen and confirmed in onnxruntime."""
    from graphopt.verify import generate_feeds
    from graphopt.verify.input_shapes import confirmed_shapes

    chosen = confirmed_shapes(model, shapes, seed=seed)
    if not quiet:
        print_chosen_shapes({name: c.to_dict() for name, c in chosen.items()}, verb=verb)
    return generate_feeds(model, {name: c.shape for name, c in chosen.items()}, seed=seed)


def _calibration_source(given: str | None, table: dict | None, recipe: str | None):
    """--calibration as given, or a folder of samples with the recipe's [calibration] preprocessing."""
    from graphopt.verify.calibration_sources import CalibrationFolder, Preprocessing

    if given is None or not Path(given).is_dir():
        return given
    return CalibrationFolder(Path(given), Preprocessing.from_table(table, recipe))


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


def _read_recipe(path: Path) -> dict:
    """A TOML recipe: `passes`, `budget`, `verify` at the top; one `[PASS]` table of options per pass."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    recipe = read_document(path, tomllib.loads, missing="recipe file does not exist", unreadable="recipe is not valid TOML",
                           invalid=tomllib.TOMLDecodeError)
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
    folder = folder_of(path)
    if not folder.is_dir():
        raise UsageError("report folder does not exist", path=str(path))
    try:
        atomic_write(path, lambda handle: handle.write((json.dumps(document, indent=2, default=str) + "\n").encode()))
    except OSError as error:
        raise UsageError(f"cannot write the report in folder '{folder}': {error.strerror or error}", path=str(path)) from error
