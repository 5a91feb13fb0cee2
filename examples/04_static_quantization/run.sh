#!/usr/bin/env bash
# Static int8 quantization of the demo model, calibrated on images, verified on other images.
# Usage: bash examples/04_static_quantization/run.sh [OUTPUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"

echo "## 1. images: 48 for calibration, 16 others for evaluation (use your own photos here)"
python "$here/make_example_images.py" "$out/calibration_images" 48 0
python "$here/make_example_images.py" "$out/evaluation_images" 16 1

echo "## 2. images -> .npz, preprocessed the way the model expects: (N, 1, 3, 32, 32)"
python "$here/images_to_npz.py" "$out/calibration_images" "$out/calibration.npz" --input image --size 32
python "$here/images_to_npz.py" "$out/evaluation_images" "$out/evaluation.npz" --input image --size 32

echo "## 3. fuse, then quantize: per-channel int8 weights, uint8 activations, percentile ranges"
# latency=off: the demo model is too small for int8 to win on a desktop CPU, and the
# latency check (on by default) would rightly keep it float; here we want to see int8.
graphopt optimize "$here/../demo/demo.onnx" -o "$out/demo.int8.onnx" \
    --passes cleanup,fuse,quantize --calibration "$out/calibration.npz" --inputs "$out/evaluation.npz" \
    --set quantize.calibrate=percentile --set quantize.latency=off --budget cos=0.99 \
    --report "$out/report.json"

echo "## 4. what quantize decided, layer by layer"
python "$here/show_layers.py" "$out/report.json"
