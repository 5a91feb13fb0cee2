"""The deployment-target options of `graphopt optimize`: `--emit` and `--latency-on`.

Kept out of `graphopt/cli.py` so the command line only adds them and hands them on.
"""

from __future__ import annotations

import argparse

__all__ = ["add_target_arguments", "target_settings", "default_suffix", "describe_emit", "EMIT_FORMATS"]

EMIT_FORMATS = ("onnx", "ort", "tflite")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--emit", choices=EMIT_FORMATS, default="onnx",
                        help="write the model for this runtime, verified in it first: onnx (default), ort "
                             "(ORT format + required_operators.config), tflite (LiteRT flatbuffer; graphopt[tflite])")
    parser.add_argument("--emit-precision", choices=("fp32", "fp16", "int8", "int8-mixed"), default="fp32",
                        help="--emit tflite: float32, float16 weights, full-integer int8 from --calibration, or "
                             "int8-mixed (int8 pieces where the accuracy allows, float32 where not)")
    parser.add_argument("--latency-on", metavar="BACKEND",
                        help="where latency decisions are timed: host-ort (default), host-litert (default with --emit "
                             "tflite), none (accuracy and MACs only), or a plugin's backend")


def target_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of `graphopt.optimize_to_file` these options set."""
    settings = {"latency_on": args.latency_on}
    if args.emit != "onnx":
        settings.update(emit=args.emit, emit_precision=args.emit_precision)
    return settings


def default_suffix(args: argparse.Namespace) -> str:
    """What `-o` defaults to after MODEL's stem: `.opt.onnx`, `.opt.ort`, `.opt.tflite`."""
    return f".opt.{args.emit}"


def describe_emit(report: dict) -> str | None:
    """One terminal line on the emitted files and their verification, when `--emit` wrote another format."""
    emitted = report.get("emit")
    if not emitted:
        return None
    verification = emitted["verification"]
    worst = min(row["cosine"] for row in verification["outputs"].values())
    files = ", ".join(f"{path} ({size:,} bytes)" for path, size in emitted["bytes"].items())
    layout = "; layout " + ", ".join(f"{name} {how}" for name, how in emitted["layout"].items() if how != "same") \
        if any(how != "same" for how in emitted.get("layout", {}).values()) else ""
    mixed = emitted.get("mixed_precision")
    pieces = (f"; {mixed['int8_nodes']} of {mixed['nodes']} nodes int8, float32: {', '.join(mixed['float_pieces']) or 'none'}"
              if mixed else "")
    return (f"emitted {emitted['format']} {emitted['precision']}: {files}; verified in {verification['runtime']} "
            f"({verification['bar']}, worst cosine {worst:.6f}){layout}{pieces}")
