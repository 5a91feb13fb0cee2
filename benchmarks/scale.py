"""Scale: graphs of 1k-100k nodes, and a transformer-like model with ~2.5 GiB of external weights.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--families chain,wide,relu]
                               [--big-gib 2.5] [--skip-big] [--skip-graphs] [--timeout 600]
                               [--compare onnxsim,onnxoptimizer]
                               [--out benchmarks/results]

Models are generated into `$GRAPHOPT_BENCH_CACHE/scale` (default `~/.cache/graphopt-bench`),
never into the repo (see `scale_models.py`). For each graph it measures, each in a subprocess
of its own so that peak RSS (`ru_maxrss` of that child, from `os.wait4`) is its own:

- the phases of one `cleanup,fuse` run in-process (`phases`): load, import, each pass, export,
  shape inference, check, verification (ORT session and run), report sizes;
- `graphopt optimize --passes cleanup,fuse` end to end (verification on, the default);
- `onnxsim` and `onnxoptimizer` (their default passes) on the same file, where they finish
  within `--timeout`.

On the big model it runs `graphopt optimize --passes cleanup,fuse` and, when a `quantize` pass
is registered, `--passes quantize --set quantize.mode=weight-only` (else reports "not
available"), then checks the output by path and loads it in onnxruntime from its path.
Writes `scale.json` and `scale.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cache_dir

import scale_models

HERE = Path(__file__).resolve().parent
GIB = 2**30


def run_child(argv: list[str], timeout: float, cwd: str | None = None) -> dict:
    """Runs `argv`; returns seconds, peak RSS (MiB) of that child alone, exit code, stderr tail."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                process.returncode = -9
                return {"ok": False, "error": f"timeout after {timeout:.0f} s", "seconds": None, "peak_rss_mib": None}
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        out.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
        stdout = out.read().decode(errors="replace")
    result = {"ok": process.returncode == 0, "exit": process.returncode, "seconds": round(seconds, 3),
              "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if process.returncode != 0:
        result["error"] = " ".join(tail)[-300:]
    if stdout.startswith("{"):
        result["stdout"] = json.loads(stdout)
    return result


def graphopt_command(model: Path, output: Path, passes: str, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "graphopt.cli", "optimize", str(model), "-o", str(output), "--passes", passes, "--quiet", *extra]


def onnxsim_command(model: Path, output: Path) -> list[str]:
    return [sys.executable, "-c", "import sys, onnx, onnxsim; m, ok = onnxsim.simplify(onnx.load(sys.argv[1])); "
            "assert ok; onnx.save(m, sys.argv[2])", str(model), str(output)]


def onnxoptimizer_command(model: Path, output: Path) -> list[str]:
    return [sys.executable, "-c", "import sys, onnx, onnxoptimizer; onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1])), sys.argv[2])",
            str(model), str(output)]


def phases_command(model: Path) -> list[str]:
    return [sys.executable, str(HERE / "scale_phases.py"), str(model)]


def nodes_of(path: Path) -> int | None:
    import onnx

    try:
        return len(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001 - a tool that wrote nothing has no node count
        return None


COMPARED = {"onnxsim": onnxsim_command, "onnxoptimizer": onnxoptimizer_command}


def bench_graphs(folder: Path, families: list[str], sizes: list[int], timeout: float, tools: list[str]) -> list[dict]:
    rows = []
    for family in families:
        for size in sizes:
            path = folder / f"{family}_{size}.onnx"
            if not path.exists():
                import onnx

                onnx.save(scale_models.FAMILIES[family](size), str(path))
            nodes = nodes_of(path)
            row = {"model": f"{family} {size}", "nodes": nodes, "bytes": path.stat().st_size}
            out = folder / "out.onnx"
            phases = run_child(phases_command(path), timeout)
            row["phases"] = phases.get("stdout")
            row["phases_peak_rss_mib"] = phases["peak_rss_mib"]
            graphopt_run = run_child(graphopt_command(path, out, "cleanup,fuse"), timeout)
            row["graphopt"] = {**graphopt_run, "nodes_after": nodes_of(out) if graphopt_run["ok"] else None}
            for tool, command in ((t, COMPARED[t]) for t in tools):
                out.unlink(missing_ok=True)
                result = run_child(command(path, out), timeout)
                row[tool] = {**result, "nodes_after": nodes_of(out) if result["ok"] else None}
            for tool in ("graphopt", *tools):
                if row[tool].get("seconds") and row[tool].get("cpu_seconds") is not None and nodes:
                    row[tool]["us_per_node"] = round(row[tool]["seconds"] / nodes * 1e6, 1)
                    row[tool]["cpu_us_per_node"] = round(row[tool]["cpu_seconds"] / nodes * 1e6, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def quantize_available() -> bool:
    from graphopt.registry import load_registry

    return "quantize" in load_registry().registry


def bench_big(folder: Path, gib: float, timeout: float) -> dict:
    model = folder / f"transformer_{gib:g}gib.onnx"
    info_path = model.with_suffix(".json")
    if not info_path.exists():
        info = scale_models.write_transformer(model, int(gib * GIB))
        info_path.write_text(json.dumps(info))
    info = json.loads(info_path.read_text())
    weight_mib = info["weight_bytes"] / 2**20
    row = {"model": f"transformer {info['layers']} layers, {info['weight_bytes'] / GIB:.2f} GiB external", **info, "runs": {}}
    runs = {"cleanup,fuse": ["cleanup,fuse", []]}
    if quantize_available():
        runs["quantize weight-only"] = ["quantize", ["--set", "quantize.mode=weight-only"]]
    else:
        row["runs"]["quantize weight-only"] = {"ok": False, "error": "not available: no `quantize` pass registered on this branch"}
    for label, (passes, extra) in runs.items():
        out_dir = Path(tempfile.mkdtemp(dir=folder, prefix="out-"))
        try:
            output = out_dir / "model.onnx"
            result = run_child(graphopt_command(model, output, passes, [*extra, "--report", str(out_dir / "report.json")]), timeout)
            result["rss_over_weights"] = round(result["peak_rss_mib"] / weight_mib, 2) if result["peak_rss_mib"] else None
            if result["ok"]:
                result["output_files"] = {p.name: p.stat().st_size for p in out_dir.iterdir()}
                check = run_child([sys.executable, "-c", "import sys, onnx, onnxruntime as ort; "
                                   "onnx.checker.check_model(sys.argv[1], full_check=True); "
                                   "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); print('{}')",
                                   str(output)], timeout)
                result["checker_by_path_and_ort_load"] = {k: check[k] for k in ("ok", "seconds", "peak_rss_mib", "error") if k in check}
                report = json.loads((out_dir / "report.json").read_text())
                result["passes"] = {p["name"]: {"status": p["status"], "seconds": p["seconds"], "details": p["details"]}
                                    for p in report["passes"]}
                result["verified"] = bool(report["verification"]["end_to_end"] and report["verification"]["end_to_end"]["ok"])
            row["runs"][label] = result
            print(json.dumps({label: result}), flush=True)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    return row


def to_markdown(document: dict) -> str:
    lines = [f"Command: `{document['command']}`", ""]
    if document.get("graphs"):
        lines += ["| graph | nodes | tool | wall s | µs/node (wall) | CPU µs/node | peak RSS MiB | nodes after |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in document["graphs"]:
            for tool in ("graphopt", "onnxsim", "onnxoptimizer"):
                if tool not in row:
                    continue
                r = row[tool]
                seconds = f"{r['seconds']:.2f}" if r.get("seconds") is not None else r.get("error", "failed")
                lines.append(f"| {row['model']} | {row['nodes']} | {tool} | {seconds} | {r.get('us_per_node', '–')} | {r.get('cpu_us_per_node', '–')} | "
                             f"{r.get('peak_rss_mib') or '–'} | {r.get('nodes_after') or '–'} |")
        lines += ["", "graphopt phases (`scale_phases.py`: in-process CPU time of one `cleanup,fuse` run with verification, "
                  "summed over both passes; µs per node):", ""]
        keys = list(document["graphs"][0]["phases"]["seconds"]) if document["graphs"][0].get("phases") else []
        lines += ["| graph | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for row in document["graphs"]:
            if row.get("phases"):
                cells = [f"{row['phases']['seconds'][k] / row['nodes'] * 1e6:.1f}" for k in keys]
                lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    big = document.get("big")
    if big:
        lines += ["", f"Big model: {big['model']} ({big['nodes']} nodes, hidden {big['hidden']}, ff {big['ff']}).", "",
                  "| run | ok | s | peak RSS MiB | RSS / weight bytes | checker by path + ORT load from path | note |",
                  "|---|---|---|---|---|---|---|"]
        for label, r in big["runs"].items():
            checked = r.get("checker_by_path_and_ort_load", {})
            lines.append(f"| {label} | {r['ok']} | {r.get('seconds') or '–'} | {r.get('peak_rss_mib') or '–'} | "
                         f"{r.get('rss_over_weights') or '–'} | {checked.get('ok', '–')} | {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--families", default="chain,wide,relu")
    parser.add_argument("--big-gib", type=float, default=2.5)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-graphs", action="store_true")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--compare", default="onnxsim,onnxoptimizer", help="other tools to run on the graphs")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    folder = cache_dir() / "scale"
    folder.mkdir(parents=True, exist_ok=True)
    document = {"command": "python benchmarks/scale.py " + " ".join(sys.argv[1:])}
    if not args.skip_graphs:
        tools = [t for t in args.compare.split(",") if t]
        document["graphs"] = bench_graphs(folder, args.families.split(","), [int(s) for s in args.sizes.split(",")], args.timeout, tools)
    if not args.skip_big:
        document["big"] = bench_big(folder, args.big_gib, args.timeout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "scale.md").write_text(to_markdown(document))
    print(to_markdown(document))


if __name__ == "__main__":
    main()
