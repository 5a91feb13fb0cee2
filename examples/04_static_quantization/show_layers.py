"""Prints the quantize pass's per-layer table and the end-to-end accuracy from a graphopt report."""

import json
import sys

report = json.load(open(sys.argv[1]))
entry = next(e for e in report["passes"] if e["name"] == "quantize")
details = entry["details"]
print(f"quantize: {entry['status']}; " + ", ".join(f"{k}={v}" for k, v in details.items() if not isinstance(v, (list, dict))))
layers = details.get("layers", [])
if layers:
    columns = [key for key in layers[0] if key != "node"]
    print(f"{'layer':32} " + " ".join(f"{c:>14}" for c in columns))
    for layer in layers:
        cells = [f"{layer[c]:14.4g}" if isinstance(layer[c], float) else f"{str(layer[c]):>14}" for c in columns]
        print(f"{layer['node'][:32]:32} " + " ".join(cells))
end_to_end = report["verification"]["end_to_end"]
for output, metrics in end_to_end.get("outputs", {}).items():
    print(f"end to end, {output}: cosine {metrics['cosine']:.5f}, SQNR {metrics['sqnr_db']:.1f} dB")
print(f"bytes {report['input']['bytes']:,} -> {report['output']['bytes']:,}")
