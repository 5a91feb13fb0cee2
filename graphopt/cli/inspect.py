"""`graphopt inspect`: what a model is made of (ops, parameters, bytes, MACs, opsets, interface)."""

from __future__ import annotations

import json

__all__ = ["register", "run"]


def register(commands, common) -> None:
    """Adds the `inspect` command to the `graphopt` parser."""
    parser = commands.add_parser("inspect", parents=[common], help="ops, parameters, bytes, MACs, opset, inputs/outputs")
    parser.add_argument("model", help="the .onnx model")
    parser.add_argument("--json", action="store_true", help="the summary as JSON")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                        help="count MACs at this input shape (default: chosen, as optimize does)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from graphopt.model_io import load_model
    from graphopt.shaped_summary import summarize_at_shapes
    from graphopt.verify.feeds import parse_input_shape

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
