"""`graphopt verify`: compare a candidate model's outputs with a reference's."""

from __future__ import annotations

import json

from graphopt.errors import InputError, VerificationError

__all__ = ["register", "run"]


def register(commands, common) -> None:
    """Adds the `verify` command to the `graphopt` parser."""
    parser = commands.add_parser("verify", parents=[common], help="compare a candidate model's outputs with a reference's")
    parser.add_argument("reference", help="the model taken as right")
    parser.add_argument("candidate", help="the model judged against it")
    parser.add_argument("--inputs", help=".npz with one (N, *shape) array per model input (default: generated)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS", help="shape of a dynamic input")
    parser.add_argument("--budget", help="judge against this budget instead of the lossless tolerance; "
                        "cos and sqnr hold for every sample (the worst sample is compared)")
    parser.add_argument("--budget-slices", action="append", default=[], metavar="NAME[@AXIS]=START:STOP,...",
                        help="parts of an output the budget also holds on (as for optimize)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for generated inputs")
    parser.add_argument("--per-tensor", action="store_true", help="also SQNR and cosine of every tensor both models share, worst first")
    parser.add_argument("--json", action="store_true", help="metrics per output as JSON")
    parser.set_defaults(handler=run)


_PER_TENSOR_ROWS = 30  # `verify --per-tensor` lists this many tensors, worst first


def run(args) -> int:
    from graphopt.api import prepare_feeds
    from graphopt.model_io import load_model
    from graphopt.cli.optimize import generated_feeds
    from graphopt.verify import Budget, SessionError, Verifier, input_specs, lossless_floor, split_samples
    from graphopt.verify.slices import output_slices
    from graphopt.verify.feeds import parse_input_shape
    from graphopt.verify.tensor_errors import per_tensor_errors

    reference, candidate = load_model(args.reference), load_model(args.candidate)
    interface = {spec.name: spec.dtype for spec in input_specs(reference)}
    if {spec.name: spec.dtype for spec in input_specs(candidate)} != interface:
        raise InputError("the candidate's inputs differ from the reference's (names or dtypes)", path=args.candidate)
    shapes = dict(parse_input_shape(item) for item in args.input_shape)
    feeds = prepare_feeds(args.inputs, reference) if args.inputs else generated_feeds(reference, shapes, args.seed, args.json, "verified")
    verifier = Verifier(split_samples(feeds), output_slices(reference, args.budget_slices, feeds), lossless_floor(reference))
    budget = Budget.parse(args.budget)
    outputs = {}
    for label, model, path in (("reference", reference, args.reference), ("candidate", candidate, args.candidate)):
        try:
            outputs[label] = verifier.outputs(model)
        except SessionError as error:
            raise InputError(f"onnxruntime cannot run the {label}: {error}", path=path) from error
    verdict = verifier.judge(outputs["reference"], outputs["candidate"], budget=budget)
    tensors = per_tensor_errors(reference, candidate, feeds, limit=_PER_TENSOR_ROWS) if args.per_tensor else None
    if not verdict.ok:
        verdict.first_divergence = verifier.localize(reference, candidate, budget=budget)
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


def _sample_figures(metrics: dict) -> str:
    """Worst-sample cosine and SQNR, with mean and pooled beside them when measured per sample."""
    if "cosine_pooled" not in metrics:
        return f"cosine {metrics['cosine']}, SQNR {metrics['sqnr_db']} dB"
    return (f"cosine worst {metrics['cosine']} (sample {metrics['worst_sample']}), mean {metrics['cosine_mean']}, "
            f"pooled {metrics['cosine_pooled']}, SQNR worst {metrics['sqnr_db']} dB")
