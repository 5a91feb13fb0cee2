"""graphopt `prune`: accuracy against sparsity / channel ratio, with and without reconstruction,
and 1-thread latency of structured pruning, in one run.

    python benchmarks/prune.py [--out benchmarks/results] [--runs 20] [--rounds 5]

Models: PP-OCRv4 det and PP-OCR cls (wheel `rapidocr-onnxruntime==1.4.4`, cached by
`common.fetch_models`), and a BERT-style encoder exported from torch (4 layers, width 256,
random weights: no trained checkpoint is reachable offline). Inputs: the OCR models get
synthetic text images (`text_images.py`), `--calibration` of them for fitting (64 by default)
and 16 others held out; cosine is the worst output cosine over the held-out images (one image
at a time), with the cosine over all of them stacked (what the verifier and the pass's budget
measure) beside it. Latency is `graphopt.bench.compare_latency` at 1 thread, baseline and
pruned models run in turn (`--runs` rounds, repeated `--rounds` times), medians and the ratio
of medians. `--quick` runs one setting per model.
Writes `prune.json`, `prune.md` and `prune_*.png` to `--out`. Needs matplotlib (bench extra).

`--corpus` runs the real-model corpus instead (benchmarks/lossy_corpus.py: `cleanup,fuse,prune`
at the user's budget through the CLI, worst-sample and pooled cosine on held-out inputs, run
time, latency ratio, bytes); its other flags pass through.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

import graphopt
from common import PP_OCR_MODELS, fetch_models
from graphopt.bench import compare_latency
from text_images import text_images
from graphopt.verify.metrics import output_metrics
from graphopt.verify.runner import make_session

HERE = Path(__file__).resolve().parent
_KIND = {"PP-OCRv4 det": "det", "PP-OCR cls": "cls"}  # text_images kind per model


def cosines(reference: onnx.ModelProto, candidate: onnx.ModelProto, held_out: dict) -> tuple[float, float]:
    """(worst output cosine over single held-out samples, worst output cosine over them stacked)."""
    ref_session, cand_session = make_session(reference), make_session(candidate)
    worst, pairs = 1.0, []
    for index in range(next(iter(held_out.values())).shape[0]):
        sample = {name: value[index] for name, value in held_out.items()}
        pair = (ref_session.run(None, sample), cand_session.run(None, sample))
        pairs.append(pair)
        for expected, actual in zip(*pair):
            worst = min(worst, output_metrics(expected, actual)["cosine"])
    stacked = min(output_metrics(np.stack([p[0][k] for p in pairs]), np.stack([p[1][k] for p in pairs]))["cosine"] for k in range(len(pairs[0][0])))
    return worst, stacked


def worst_cosine(reference: onnx.ModelProto, candidate: onnx.ModelProto, held_out: dict) -> float:
    return cosines(reference, candidate, held_out)[0]


def interleaved_latency(baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict, rounds: int, runs: int) -> dict:
    base, cand = [], []
    for _ in range(rounds):
        timing = compare_latency({"baseline": baseline, "pruned": candidate}, feeds, threads=1, runs=runs)
        base.append(timing["baseline"]["median_ms"])
        cand.append(timing["pruned"]["median_ms"])
    base_ms, cand_ms = statistics.median(base), statistics.median(cand)
    return {"baseline_ms": round(base_ms, 3), "pruned_ms": round(cand_ms, 3), "speedup": round(base_ms / cand_ms, 3)}


CLEANUP_FIRST = []  # --cleanup: fold constant subgraphs (a Reshape of a Constant bias) before pruning


def prune_once(model, options, calibration) -> tuple[onnx.ModelProto, dict, float]:
    start = time.perf_counter()
    passes = CLEANUP_FIRST + ["prune"]
    result = graphopt.optimize(model, passes=passes, options={"prune": options}, calibration=calibration, verify="off")
    return result.model, result.report["passes"][-1].get("details", {}), time.perf_counter() - start


def parameters(model: onnx.ModelProto) -> int:
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    count += int(np.prod(attribute.t.dims))
    return count


STRUCTURED = {
    "l2, no refit": {"importance": "l2", "reconstruct": "false"},
    "activation + refit": {"importance": "activation", "reconstruct": "true"},
    "activation + refit, ×8": {"importance": "activation", "reconstruct": "true", "channel_multiple": 8, "refit_rounds": 8},
}
# det: uniform ratios against ratios of MACs placed by measured loss per MAC (allocation=latency)
STRUCTURED_DET = {
    "activation + refit, ×8": STRUCTURED["activation + refit, ×8"],
    "latency + refit, ×8": {"importance": "activation", "reconstruct": "true", "channel_multiple": 8, "allocation": "latency", "max_ratio": 0.75,
                            "refit_rounds": 8},
    "latency + refit, ×8, 24 rounds": {"importance": "activation", "reconstruct": "true", "channel_multiple": 8, "allocation": "latency",
                                       "max_ratio": 0.75, "refit_rounds": 24},
}


def bench_ocr(label: str, folder: Path, ratios, sparsities, args, variants=STRUCTURED) -> list[dict]:
    file, shapes = PP_OCR_MODELS[label]
    model = onnx.load(str(folder / file))
    (name, _), = shapes.items()
    calibration = {name: text_images(_KIND[label], args.calibration, seed=1)}
    held_out = {name: text_images(_KIND[label], 16, seed=2)}
    feeds = {name: held_out[name][0]}
    rows = []
    for ratio in ratios:
        for variant, options in variants.items():
            pruned, details, seconds = prune_once(model, dict(options, structured="channels", ratio=ratio, samples=args.calibration, backoff=-1), calibration)
            worst, stacked = cosines(model, pruned, held_out)
            row = {"model": label, "kind": "channels", "amount": ratio, "variant": variant, "cosine": round(worst, 5), "cosine_stacked": round(stacked, 5),
                   "params": parameters(pruned), "params_before": parameters(model), "channels_removed": details.get("channels_removed"),
                   "groups_skipped": details.get("groups_skipped"), "prune_s": round(seconds, 1)}
            row.update(interleaved_latency(model, pruned, feeds, args.rounds, args.runs))
            logging.info("%s", row)
            rows.append(row)
    for sparsity in sparsities:
        for variant, reconstruct in (("magnitude", "false"), ("SparseGPT", "true")):
            pruned, details, seconds = prune_once(model, {"sparsity": sparsity, "reconstruct": reconstruct, "samples": args.calibration, "backoff": -1}, calibration)
            row = {"model": label, "kind": "weights", "amount": sparsity, "variant": variant,
                   "cosine": round(worst_cosine(model, pruned, held_out), 5), "prune_s": round(seconds, 1),
                   "zeroed": details.get("weights_zeroed"), "zip_bytes_before": details.get("zip_bytes_before"), "zip_bytes_after": details.get("zip_bytes_after")}
            logging.info("%s", row)
            rows.append(row)
    return rows


def encoder_model(width: int = 256, layers: int = 4, seq: int = 64, vocab: int = 1000):
    sys.path.insert(0, str(HERE.parent / "tests"))
    import torch
    import torch_models

    module = torch_models._transformer_module(0, vocab=vocab, width=width, heads=4, layers=layers, gelu="none")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (1, seq), dtype=np.int64)
    mask = np.ones((1, seq), dtype=np.int64)
    model = torch_models._export(module, (torch.from_numpy(ids), torch.from_numpy(mask)), "torchscript", 17, ["ids", "mask"], ["hidden"])

    def feeds(count: int, seed: int) -> dict:
        generator = np.random.default_rng(seed)
        return {"ids": generator.integers(0, vocab, (count, 1, seq), dtype=np.int64), "mask": np.ones((count, 1, seq), dtype=np.int64)}

    return model, feeds(32, 1), feeds(4, 2)


def bench_encoder(sparsities, ratios, args) -> list[dict]:
    model, calibration, held_out = encoder_model()
    feeds = {name: value[0] for name, value in held_out.items()}
    rows = []
    for sparsity in sparsities:
        for variant, reconstruct in (("magnitude", "false"), ("SparseGPT", "true")):
            pruned, details, seconds = prune_once(model, {"sparsity": sparsity, "reconstruct": reconstruct, "samples": 32, "backoff": -1}, calibration)
            share = details["weights_zeroed"] / max(1, details["weights_in_pruned_layers"])
            row = {"model": "encoder (4×256, torch)", "kind": "weights", "amount": sparsity, "variant": variant, "linear_zeroed": round(share, 4),
                   "cosine": round(worst_cosine(model, pruned, held_out), 5), "prune_s": round(seconds, 1)}
            logging.info("%s", row)
            rows.append(row)
    for ratio in ratios:
        for variant, options in STRUCTURED.items():
            pruned, details, seconds = prune_once(model, dict(options, structured="channels", ratio=ratio, samples=32, backoff=-1), calibration)
            row = {"model": "encoder (4×256, torch)", "kind": "channels", "amount": ratio, "variant": variant, "cosine": round(worst_cosine(model, pruned, held_out), 5),
                   "channels_removed": details.get("channels_removed"), "groups_skipped": details.get("groups_skipped"), "prune_s": round(seconds, 1)}
            row.update(interleaved_latency(model, pruned, feeds, args.rounds, args.runs))
            logging.info("%s", row)
            rows.append(row)
    return rows


def bench_storage() -> list[dict]:
    """`storage=sparse` against dense on the encoder's linear weights: bytes, and equal outputs in onnxruntime."""
    import zlib

    model, _, held_out = encoder_model()
    rows = []
    for sparsity in (0.5, 0.7, 0.8, 0.9):
        built = {}
        for storage in ("dense", "sparse"):
            built[storage] = prune_once(model, {"sparsity": sparsity, "reconstruct": "false", "storage": storage, "backoff": -1}, None)
        (dense, _, _), (sparse, details, _) = built["dense"], built["sparse"]
        worst, _ = cosines(dense, sparse, held_out)
        rows.append({"model": "encoder (4×256, torch)", "kind": "storage", "variant": "magnitude", "amount": sparsity,
                     "dense_bytes": details["dense_bytes"], "stored_bytes": details["stored_bytes"], "zip_bytes": details["zip_bytes_after"],
                     "file_dense": dense.ByteSize(), "file_sparse": sparse.ByteSize(),
                     "file_dense_zip": len(zlib.compress(dense.SerializeToString(), 6)), "file_sparse_zip": len(zlib.compress(sparse.SerializeToString(), 6)),
                     "cosine_sparse_vs_dense": round(worst, 7)})
        logging.info("%s", rows[-1])
    return rows


def plot(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for kind, xlabel in (("channels", "channel ratio removed"), ("weights", "weight sparsity")):
        models = sorted({row["model"] for row in rows if row["kind"] == kind})
        if not models:
            continue
        figure, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.6), squeeze=False)
        for axis, model in zip(axes[0], models):
            for variant in sorted({row["variant"] for row in rows if row["kind"] == kind and row["model"] == model}):
                points = sorted((row["amount"], row["cosine"]) for row in rows if row["kind"] == kind and row["model"] == model and row["variant"] == variant)
                axis.plot(*zip(*points), marker="o", label=variant)
            axis.set_title(model)
            axis.set_xlabel(xlabel)
            axis.set_ylabel("worst output cosine (held out)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.tight_layout()
        path = out / f"prune_{kind}_cosine.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path.name)
    timed = [row for row in rows if "speedup" in row]
    if timed:
        figure, axis = plt.subplots(figsize=(5.5, 3.8))
        for (model, variant) in sorted({(row["model"], row["variant"]) for row in timed}):
            points = sorted((row["cosine"], row["speedup"]) for row in timed if row["model"] == model and row["variant"] == variant)
            axis.plot(*zip(*points), marker="o", label=f"{model}: {variant}")
        axis.axhline(1.3, color="grey", linestyle="--", linewidth=0.8)
        axis.axvline(0.98, color="grey", linestyle=":", linewidth=0.8)
        axis.set_xlabel("worst output cosine (held out)")
        axis.set_ylabel("1-thread speedup (×)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
        figure.tight_layout()
        path = out / "prune_speedup.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path.name)
    return written


def markdown(rows: list[dict], command: str, plots: list[str]) -> str:
    lines = ["# prune benchmark", "", f"Command: `{command}`", ""]
    lines += ["## Structured (channels)", "", "| model | ratio | variant | worst cosine | stacked cosine | channels removed | groups skipped | params | baseline ms | pruned ms | speedup | prune s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["kind"] == "channels":
            lines.append(f"| {row['model']} | {row['amount']} | {row['variant']} | {row['cosine']} | {row.get('cosine_stacked', '')} | {row.get('channels_removed')} | {row.get('groups_skipped')} | "
                         f"{row.get('params', '')} / {row.get('params_before', '')} | {row['baseline_ms']} | {row['pruned_ms']} | {row['speedup']} | {row['prune_s']} |")
    lines += ["", "## Unstructured (weights)", "", "| model | sparsity | variant | worst cosine | linear weights zeroed | zip bytes before → after | prune s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["kind"] == "weights":
            zipped = f"{row['zip_bytes_before']} → {row['zip_bytes_after']}" if row.get("zip_bytes_before") else ""
            lines.append(f"| {row['model']} | {row['amount']} | {row['variant']} | {row['cosine']} | {row.get('linear_zeroed', '')} | {zipped} | {row['prune_s']} |")
    storage = [row for row in rows if row["kind"] == "storage"]
    if storage:
        lines += ["", "## Sparse storage (storage=sparse)", "", "| model | sparsity | pruned weights dense | stored | zip | file dense | file sparse | file zipped dense / sparse | cosine sparse vs dense |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['amount']} | {r['dense_bytes']} | {r['stored_bytes']} | {r['zip_bytes']} | {r['file_dense']} | {r['file_sparse']} | "
                  f"{r['file_dense_zip']} / {r['file_sparse_zip']} | {r['cosine_sparse_vs_dense']} |" for r in storage]
    lines += [""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--corpus" in sys.argv:  # the real-model corpus as a user runs it: benchmarks/lossy_corpus.py
        import lossy_corpus

        rest = [argument for argument in sys.argv[1:] if argument != "--corpus"]
        lossy_corpus.main(["--pass", "prune", "--tag", "lossy_corpus_prune", *rest])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one setting per model, to check the script")
    parser.add_argument("--models", default="det,cls,encoder,storage", help="which models to run; rows of the others are kept from an earlier prune.json")
    parser.add_argument("--cleanup", action="store_true", help="run the cleanup pass before prune")
    parser.add_argument("--calibration", type=int, default=64, help="synthetic text images the OCR models are fitted on")
    parser.add_argument("--variants", default="", help="structured variants to run (exact names, separated by ;), default all")
    parser.add_argument("--ratios", default="", help="channel ratios for the OCR models, comma-separated (default 0.05,0.1,0.2,0.3)")
    args = parser.parse_args()
    if args.cleanup:
        CLEANUP_FIRST.append("cleanup")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("graphopt").setLevel(logging.ERROR)
    folder = fetch_models()
    ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else [0.1] if args.quick else [0.05, 0.1, 0.2, 0.3]
    sparsities = [0.5] if args.quick else [0.3, 0.4, 0.5, 0.6]
    chosen = set(args.models.split(","))
    if args.variants:
        wanted = tuple(args.variants.split(";"))
        for table in (STRUCTURED, STRUCTURED_DET):
            for name in [name for name in table if name not in wanted]:
                del table[name]
    rows = []
    if "det" in chosen:
        rows += bench_ocr("PP-OCRv4 det", folder, ratios, [], args, STRUCTURED_DET)
    if "cls" in chosen:
        rows += bench_ocr("PP-OCR cls", folder, ratios, [0.3, 0.5][-1 if args.quick else 0:], args)
    if "storage" in chosen:
        rows += bench_storage()
    if "encoder" in chosen:
        rows += bench_encoder(sparsities, [0.25] if args.quick else [0.25, 0.5], args)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/prune.py" + " ".join(f" {a}" for a in sys.argv[1:])
    previous = args.out / "prune.json"
    if chosen != {"det", "cls", "encoder", "storage"} and previous.exists():
        earlier = json.loads(previous.read_text())
        fresh = {(row["model"], row["kind"], row["variant"], row["amount"]) for row in rows}  # a re-run setting replaces its old row
        rows = [row for row in earlier["rows"] if (row["model"], row["kind"], row["variant"], row["amount"]) not in fresh] + rows
        command = f"{earlier['command']}; then {command}"
    plots = plot(rows, args.out)
    (args.out / "prune.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (args.out / "prune.md").write_text(markdown(rows, command, plots))
    print(markdown(rows, command, plots))


if __name__ == "__main__":
    main()
