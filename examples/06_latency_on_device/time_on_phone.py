"""Quantize a model with every keep-float decision timed on a phone: `python time_on_phone.py MODEL OUT [BACKEND]`.

The plugin is handed to the API here; installed (`pip install .`), it is found through its entry
point and `graphopt optimize MODEL --passes cleanup,fuse,quantize --latency-on adb-ort` does the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphopt  # noqa: E402
import graphopt_adb_latency  # noqa: E402


def main(model: str, output: str, backend: str = "adb-ort") -> None:
    report = graphopt.optimize_to_file(model, output, passes=["cleanup", "fuse", "quantize"],
                                       plugins=[graphopt_adb_latency], latency_on=backend)
    quantize = report["passes"][-1]["details"]
    print(f"latency backend: {report['latency']['backend']} ({report['latency']['comparisons']})")
    print(f"quantized {quantize.get('quantized', 0)} layers, kept float {quantize.get('kept_float', 0)}")
    for row in quantize.get("layers", []):
        print(f"  {row['node']:<24} {row['decision']:<10} float {row['float_ms']} ms, int8 {row['int8_ms']} ms ({row['why']})")


if __name__ == "__main__":
    main(*sys.argv[1:])
