"""What a graphopt report says, pass by pass: status, size, what it did, what it cost."""

import json
import sys

report = json.load(open(sys.argv[1]))
print(f"{'pass':10} {'status':12} {'nodes':>11} {'bytes':>19}  cosine    SQNR dB  what it did")
for entry in report["passes"]:
    metrics = (entry.get("verification") or {}).get("outputs", {})
    worst = min(metrics.values(), key=lambda m: float(m["cosine"])) if metrics else None  # JSON spells inf "inf"
    accuracy = f"{float(worst['cosine']):.5f}  {float(worst['sqnr_db']):7.1f}" if worst else "      -        -"
    did = ", ".join(f"{key}={value}" for key, value in entry["details"].items()
                    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and value not in (0, ""))
    print(f"{entry['name']:10} {entry['status']:12} {entry['nodes_before']:>4} -> {entry['nodes_after']:<4} "
          f"{entry['bytes_before']:>8,} -> {entry['bytes_after']:<8,} {accuracy}  {did[:90]}")
end_to_end = report["verification"]["end_to_end"]
print(f"\nend to end against the original (budget {report['verification']['budget']}): {'ok' if end_to_end['ok'] else 'FAILED'}")
for output, metrics in end_to_end.get("outputs", {}).items():
    print(f"  {output}: cosine {float(metrics['cosine']):.5f}, SQNR {float(metrics['sqnr_db']):.1f} dB, max abs {float(metrics['max_abs']):.3g}")
print(f"size {report['input']['bytes']:,} -> {report['output']['bytes']:,} bytes; "
      f"MACs {report['input']['macs']:,} -> {report['output']['macs']:,}")
