"""Model parallelism: `graphopt partition` + the pipelined runner against one whole-model session.

    python benchmarks/partition.py [--samples 16] [--rounds 3] [--models det,resnet,encoder]
                                   [--stages 2,3] [--no-ray] [--out benchmarks/results]

Models: PP-OCRv4 det at 1×3×640×640 (the `rapidocr-onnxruntime==1.4.4` wheel, fetched into
the benchmark cache as `common.fetch_models` does), the ResNet-style CNN of
`tests/torch_models.py` exported at 1×3×224×224, and a BERT-style encoder (4 layers, width
256, 4 heads, 1×128 tokens) exported by torch. Each is partitioned by measured latency with
the default cut weight, K = 2 and 3 stages, every stage at 1 thread.

Per model and K:
- throughput (samples/s) of the pipelined runner, `local` (one process per stage) and `ray`
  (one actor per stage, `ray.init(num_cpus=max K)` on this machine, started only for the Ray
  rounds), in steady state: the inputs cycle without end, the clock starts after the warm-up
  results (3, or the first Ray call's `samples_per_call`; worker start-up excluded) and stops
  after `--samples` more (at least 3 Ray calls' worth), before the pipeline drains; against
  one whole-model onnxruntime session at 1 thread (ORT_ENABLE_ALL, as the stages run) over
  the same inputs; `--rounds` rounds per backend, whole and pipelines alternating, medians
  reported, with the load average of each round; a backend's speedup is against the whole-model
  rounds interleaved with its own (the load may differ between the local and the Ray phase);
- the runner's overhead, load-independent enough to compare runs on a busy machine: the CPU
  time per sample of every process of the run (this one, the stage workers, Ray's daemons and
  actors; Linux `schedstat`, ns) minus the whole model's CPU per sample, divided by the K+1
  hops (driver → stage 0 → … → driver). It includes what running the stages side by side
  costs them (shared caches), not only transport;
- balance: the slowest stage against the ideal (whole latency / K), as planned (profiled
  costs) and as measured (each stage model timed at 1 thread, interleaved with the whole);
- crossing bytes of the chosen cuts against brute force over every cut set: the fewest bytes
  among cut sets at least as balanced as the chosen one (the planner's exactness) and among
  those within 1.15× the ideal;
- for one model, the time from killing a stage worker to the runner's error.
Writes `partition.json` and `partition.md` to `--out`. The machine's load average is recorded:
other work on its 2 cores takes from the pipeline first.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from common import PP_OCR_MODELS, fetch_models  # noqa: E402
from graphopt.bench import compare_latency  # noqa: E402
from graphopt.partition import partition_to_dir  # noqa: E402
from graphopt.partition.planner import enumerate_cuts  # noqa: E402
from graphopt.partition.manifest import load_manifest  # noqa: E402
from graphopt.partition.runner import PipelineError, default_samples_per_call, stage_session  # noqa: E402
from graphopt.pipeline_runner import run  # noqa: E402

WARMUP = 3


def cases(selected: set[str], folder: Path) -> list[dict]:
    found = []
    if "det" in selected:
        path = fetch_models() / PP_OCR_MODELS["PP-OCRv4 det"][0]
        found.append({"label": "PP-OCRv4 det 640×640", "path": path, "sample": lambda rng: {"x": rng.random((1, 3, 640, 640), np.float32)}})
    if "resnet" in selected or "encoder" in selected:
        import torch_models
    if "resnet" in selected:
        path = folder / "resnet.onnx"
        onnx.save(torch_models.resnet_like(size=224), path)
        found.append({"label": "ResNet-style CNN 224×224", "path": path,
                      "sample": lambda rng: {"image": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}})
    if "encoder" in selected:
        path = folder / "encoder.onnx"
        onnx.save(torch_models.transformer(layers=4, width=256, heads=4, batch=1, seq=128, vocab=1000), path)
        found.append({"label": "BERT-style encoder 4×256, seq 128", "path": path,
                      "sample": lambda rng: {"ids": rng.integers(0, 1000, (1, 128)), "mask": np.ones((1, 128), np.int64)}})
    return found


def whole_throughput(path: Path, samples: list[dict]) -> tuple[float, float]:
    """Samples/s of one whole-model session at 1 thread, and its CPU ms per sample."""
    session = stage_session(str(path), 1, ["CPUExecutionProvider"])
    for sample in samples[:WARMUP]:
        session.run(None, sample)
    start, cpu = time.perf_counter(), time.thread_time()
    for sample in samples[WARMUP:]:
        session.run(None, sample)
    count = len(samples) - WARMUP
    return count / (time.perf_counter() - start), 1000 * (time.thread_time() - cpu) / count


def pipelined_throughput(folder: Path, samples: list[dict], backend: str) -> tuple[float, float | None]:
    """Steady-state samples/s of the runner on endlessly cycling inputs, and the CPU ms per
    sample of all processes of the run (None where /proc has no schedstat)."""
    per_call = default_samples_per_call(load_manifest(folder)[0]) if backend == "ray" else 1
    warmup = math.ceil(WARMUP / per_call) * per_call
    timed = max(len(samples) - WARMUP, 3 * per_call)
    timed = math.ceil(timed / per_call) * per_call
    results = run(folder, itertools.cycle(samples), backend=backend)
    try:
        for _ in range(warmup):
            next(results)
        cpu, start = tree_cpu_seconds(), time.perf_counter()
        for _ in range(timed):
            next(results)
        elapsed, cpu_after = time.perf_counter() - start, tree_cpu_seconds()
    finally:
        results.close()
    cpu_ms = None if cpu is None or cpu_after is None else 1000 * (cpu_after - cpu) / timed
    return timed / elapsed, cpu_ms


def tree_cpu_seconds() -> float | None:
    """CPU seconds so far of this process and all its descendants (every thread; Linux schedstat)."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        pid = int(stat.split("/")[2])
        parents[pid] = int(text.rsplit(")", 1)[1].split()[1])
    family, grown = {os.getpid()}, True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grown = bool(more)
    total = 0.0
    for pid in family:
        for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            try:
                total += int(Path(path).read_text().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                continue
    return total if total > 0 else None


def stage_latencies(path: Path, folder: Path, stages: int, sample: dict, runs: int) -> dict:
    """Median ms of the whole model and of each stage (on its real inputs), timed interleaved."""
    values, feeds, models = dict(sample), {"whole": sample}, {"whole": str(path)}
    for index in range(stages):
        stage_path = folder / f"stage_{index}.onnx"
        session = stage_session(str(stage_path), 1, ["CPUExecutionProvider"])
        inputs = {value.name: values[value.name] for value in session.get_inputs()}
        feeds[f"stage_{index}"], models[f"stage_{index}"] = inputs, str(stage_path)
        values = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    timings = compare_latency(models, feeds, threads=1, runs=runs)
    return {label: timing["median_ms"] for label, timing in timings.items()}


def brute_force(result, stages: int) -> dict:
    costs, cut_bytes = result.node_costs, result.cut_bytes
    bounds = (0, *result.manifest["plan"]["cuts"], len(costs))
    chosen = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))  # in the node costs the plan was made from
    same = enumerate_cuts(costs, cut_bytes, stages, max_stage_cost=chosen)
    ideal = sum(costs) / stages
    loose = enumerate_cuts(costs, cut_bytes, stages, max_stage_cost=1.15 * ideal)
    return {
        "chosen_bytes": sum(result.manifest["plan"]["cut_bytes"]),
        "brute_force_bytes_same_balance": same[0] if same else None,
        "brute_force_bytes_within_1.15_ideal": loose[0] if loose else None,
        "candidate_cut_sets": sum(1 for _ in itertools.combinations(range(1, len(costs)), stages - 1)),
    }


def killed_worker_seconds(folder: Path, sample: dict) -> dict:
    results = run(folder, itertools.repeat(sample))
    next(results)
    worker = next(p for p in multiprocessing.active_children() if p.name == "graphopt-stage-1")
    os.kill(worker.pid, signal.SIGKILL)
    start = time.perf_counter()
    try:
        for _ in results:
            pass
    except PipelineError as error:
        return {"seconds": time.perf_counter() - start, "error": str(error)}
    return {"seconds": None, "error": "no error"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per stage for the measured balance")
    parser.add_argument("--models", default="det,resnet,encoder")
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    stage_counts = [int(k) for k in args.stages.split(",")]
    backends = ["local"] + ([] if args.no_ray else ["ray"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphopt-partition-bench-") as scratch:
        scratch = Path(scratch)
        for case in cases(set(args.models.split(",")), scratch):
            rng = np.random.default_rng(0)
            samples = [case["sample"](rng) for _ in range(args.samples + WARMUP)]
            verification = {name: np.stack([s[name] for s in samples[:2]]) for name in samples[0]}
            partitions = {}
            for stages in stage_counts:
                folder = scratch / f"{Path(case['path']).stem}_{stages}"
                start = time.perf_counter()
                result = partition_to_dir(case["path"], folder, stages=stages, inputs=verification)
                partitions[stages] = (folder, result, time.perf_counter() - start)
            throughput: dict[str, list[float]] = {"whole": []}
            cpu: dict[str, list[float]] = {"whole": []}
            loads: dict[str, list[float]] = {}
            # One backend at a time: a running Ray cluster's own processes would slow the local
            # pipeline. Within a backend, the whole model and each K alternate round by round.
            for backend in backends:
                if backend == "ray":
                    import ray

                    ray.init(num_cpus=max(stage_counts), include_dashboard=False, log_to_driver=False)
                for round_index in range(args.rounds):
                    speed, cpu_ms = whole_throughput(case["path"], samples)
                    throughput["whole"].append(speed)
                    throughput.setdefault(f"whole during {backend}", []).append(speed)
                    cpu["whole"].append(cpu_ms)
                    for stages in stage_counts:
                        key = f"{backend} K={stages}"
                        speed, cpu_ms = pipelined_throughput(partitions[stages][0], samples, backend)
                        throughput.setdefault(key, []).append(speed)
                        cpu.setdefault(key, []).append(cpu_ms)
                        loads.setdefault(key, []).append(round(os.getloadavg()[0], 2))
                if backend == "ray":
                    ray.shutdown()
            whole = statistics.median(throughput["whole"])
            for stages in stage_counts:
                folder, result, seconds = partitions[stages]
                latencies = stage_latencies(Path(case["path"]), folder, stages, samples[0], args.runs)
                ideal_ms = latencies["whole"] / stages
                row = {
                    "model": case["label"], "stages": stages, "partition_seconds": seconds,
                    "cuts": result.manifest["plan"]["cuts"], "nodes": sum(s["nodes"] for s in result.manifest["stages"]),
                    "whole_samples_per_s": whole,
                    "throughput": {backend: statistics.median(throughput[f"{backend} K={stages}"]) for backend in backends},
                    "throughput_rounds": {key: values for key, values in throughput.items() if key.startswith("whole") or key.endswith(f"K={stages}")},
                    "planned_slowest_over_ideal": result.manifest["balance"]["slowest_over_ideal"],
                    "stage_ms": [latencies[f"stage_{i}"] for i in range(stages)], "whole_ms": latencies["whole"],
                    "measured_slowest_over_ideal": max(latencies[f"stage_{i}"] for i in range(stages)) / ideal_ms,
                    "bytes": brute_force(result, stages),
                    "bit_exact": result.manifest["verification"]["bit_exact"],
                }
                # against the whole-model rounds interleaved with this backend's: the load moves between phases
                row["speedup"] = {backend: value / statistics.median(throughput[f"whole during {backend}"])
                                  for backend, value in row["throughput"].items()}
                row["load_average_per_round"] = {b: loads[f"{b} K={stages}"] for b in backends}
                row["cpu_ms_per_sample"] = {"whole": statistics.median(cpu["whole"]),
                                            **{b: _median_or_none(cpu[f"{b} K={stages}"]) for b in backends}}
                row["overhead_ms_per_hop"] = {
                    b: None if row["cpu_ms_per_sample"][b] is None else (row["cpu_ms_per_sample"][b] - row["cpu_ms_per_sample"]["whole"]) / (stages + 1)
                    for b in backends}
                row["ray_samples_per_call"] = default_samples_per_call(result.manifest) if "ray" in backends else None
                rows.append(row)
                print(json.dumps(row), flush=True)
            if case is not None and "killed" not in locals():
                killed = killed_worker_seconds(partitions[stage_counts[0]][0], samples[0])
    document = {"rows": rows, "killed_worker": locals().get("killed"), "load_average": os.getloadavg(),
                "command": "python benchmarks/partition.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "partition.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "partition.md").write_text(to_markdown(document))
    print(to_markdown(document))


def _median_or_none(values: list) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def to_markdown(document: dict) -> str:
    lines = [f"# Partition benchmark\n\n`{document['command']}`; load average at the end {tuple(round(x, 1) for x in document['load_average'])}.\n",
             "| model | K | whole (samples/s) | local | ray | overhead per hop, ms CPU (local / ray) | load per round (local / ray) | slowest/ideal planned | measured | stage ms | crossing bytes | brute force, same balance | brute force, ≤1.15× ideal | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in document["rows"]:
        speed = {b: f"{row['throughput'][b]:.2f} ({row['speedup'][b]:.2f}×)" for b in row["throughput"]}
        b = row["bytes"]
        hop = " / ".join("–" if row["overhead_ms_per_hop"].get(k) is None else f"{row['overhead_ms_per_hop'][k]:.2f}" for k in ("local", "ray"))
        load = " / ".join(",".join(str(x) for x in row["load_average_per_round"].get(k, [])) or "–" for k in ("local", "ray"))
        per_call = f" ({row['ray_samples_per_call']}/call)" if row.get("ray_samples_per_call") else ""
        lines.append(f"| {row['model']} | {row['stages']} | {row['whole_samples_per_s']:.2f} | {speed.get('local', '–')} | {speed.get('ray', '–')}{per_call} | {hop} | {load} | "
                     f"{row['planned_slowest_over_ideal']:.3f} | {row['measured_slowest_over_ideal']:.3f} | "
                     f"{', '.join(f'{ms:.1f}' for ms in row['stage_ms'])} (whole {row['whole_ms']:.1f}) | {b['chosen_bytes']:,} | "
                     f"{b['brute_force_bytes_same_balance']:,} | {b['brute_force_bytes_within_1.15_ideal'] if b['brute_force_bytes_within_1.15_ideal'] is None else format(b['brute_force_bytes_within_1.15_ideal'], ',')} | {row['bit_exact']} |")
    killed = document.get("killed_worker")
    if killed:
        lines.append(f"\nKilled stage-1 worker → `{killed['error']}` after {killed['seconds']:.2f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
