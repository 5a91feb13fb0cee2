#!/usr/bin/env bash
# Factorize a classifier held to its own task metric: top-1 may drop 5% at most.
#   bash run.sh OUTDIR
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$(mktemp -d)}"
python "$HERE/make_task.py" "$OUT"
cd "$OUT"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"   # top1.py importable as `top1`
graphopt optimize task.onnx -o task.opt.onnx --passes cleanup,fuse,factorize \
    --set factorize.max_error=0.3 \
    --calibration calibration.npz --inputs inputs.npz \
    --evaluator top1:top1 --budget score=-5% --report report.json --quiet
python - <<'PY'
import json
report = json.load(open("report.json"))
factorize = report["passes"][-1]
score = report["verification"]["end_to_end"]["score"]
print(f"factorize: {factorize['status']}, tries {len(factorize.get('tries', [])) or 1}")
print(f"top-1: {score['reference']:.3f} -> {score['score']:.3f} (budget {score['budget']})")
PY
