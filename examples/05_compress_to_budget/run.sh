#!/usr/bin/env bash
# Compress the demo model with every lossy pass under one accuracy budget, then read the report.
# Usage: bash examples/05_compress_to_budget/run.sh [OUTPUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
images="$here/../04_static_quantization"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"

echo "## calibration and evaluation data (disjoint image sets; use your own)"
python "$images/make_example_images.py" "$out/calibration_images" 48 0
python "$images/make_example_images.py" "$out/evaluation_images" 16 1
python "$images/images_to_npz.py" "$out/calibration_images" "$out/calibration.npz" --input image --size 32
python "$images/images_to_npz.py" "$out/evaluation_images" "$out/evaluation.npz" --input image --size 32

echo "## every pass, one end-to-end budget: cosine >= 0.99 against the original"
# Each lossy pass is verified right after it runs; --keep-going rolls back one that would
# break the budget and goes on with the next, instead of stopping.
graphopt optimize "$here/../demo/demo.onnx" -o "$out/demo.small.onnx" \
    --passes cleanup,fuse,factorize,prune,quantize --budget cos=0.99 --keep-going \
    --calibration "$out/calibration.npz" --inputs "$out/evaluation.npz" \
    --set prune.sparsity=0.15 --set quantize.latency=off \
    --report "$out/report.json"

echo "## what each pass did and what it cost"
python "$here/read_report.py" "$out/report.json"
