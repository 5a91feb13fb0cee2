#!/usr/bin/env bash
# The command line on the demo model: inspect, optimize with a report, verify, time.
# Usage: bash examples/01_cli/run.sh [OUTPUT_DIR]    (default: a new temporary folder)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="$here/../demo/demo.onnx"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"

echo "## what is in the model"
graphopt inspect "$model"

echo "## which passes are installed"
graphopt passes

echo "## optimize: lossless passes, verified after each one, report as JSON"
graphopt optimize "$model" -o "$out/demo.opt.onnx" --passes cleanup,fuse --report "$out/report.json"

echo "## check the result against the original on our own inputs"
python - "$out/inputs.npz" <<'PY'
import sys
import numpy as np
rng = np.random.default_rng(1)
np.savez(sys.argv[1], image=rng.standard_normal((4, 1, 3, 32, 32)).astype(np.float32))  # 4 samples
PY
graphopt verify "$model" "$out/demo.opt.onnx" --inputs "$out/inputs.npz"

echo "## latency at 1 thread (the stand-in for a phone's big core)"
graphopt bench "$model" "$out/demo.opt.onnx" --threads 1 --runs 20

echo "## a bad input: one line on stderr and exit code 2, nothing written"
set +e
graphopt optimize "$here/README.md" -o "$out/never.onnx"
status=$?
set -e
echo "exit code: $status"
test "$status" -eq 2 && test ! -e "$out/never.onnx"
echo "outputs in $out"
