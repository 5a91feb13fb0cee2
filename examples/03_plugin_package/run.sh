#!/usr/bin/env bash
# Install the plugin package, see graphopt find it, run its pass on the demo model, run its tests.
# Usage: bash examples/03_plugin_package/run.sh [OUTPUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"

echo "## install: an ordinary pip install; graphopt needs no change"
python -m pip install --quiet --no-deps "$here"

echo "## graphopt finds the pass through the entry point"
graphopt passes | grep -A4 "round-weights"

echo "## run it after graphopt's own passes, with an option set from the command line"
graphopt optimize "$here/../demo/demo.onnx" -o "$out/demo.rounded.onnx" \
    --passes cleanup,fuse,round-weights --set round-weights.min_elements=64 --report "$out/report.json"

echo "## the package's own tests"
(cd "$here" && python -m pytest -q -p no:cacheprovider tests)
