"""Runs `cleanup` over every ONNX backend conformance case and prints the tally.

    python tests/conformance/tally.py [--only SUBSTRING] [--every N]

Prints `ok / refused / not-runnable / failed` counts, then each failed case with its reason
(and, with --verbose, each refused and not-runnable one). Exit status 1 if any case failed.
The same checks as `test_onnx_node_cases.py`, from `conformance_support.py`.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conformance_support as support  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="only cases whose name contains this")
    parser.add_argument("--every", type=int, default=1, help="every N-th case in sorted order (the test sample uses 8)")
    parser.add_argument("--verbose", action="store_true", help="also list refused and not-runnable cases")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # graphopt's own warnings would drown the tally

    started = time.perf_counter()
    cases = support.all_cases()
    names = support.sample([name for name in cases if args.only in name], args.every)
    outcomes: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for name in names:
        case = cases[name]
        reason = support.not_runnable_reason(case)
        if reason is not None:
            outcomes["not-runnable"].append((name, reason))
            continue
        try:
            outcome, detail = support.check_case(case)
        except Exception as error:  # noqa: BLE001 - every other exception is a failure to report
            where = traceback.extract_tb(error.__traceback__)[-1]
            text = " ".join(str(error).split())[:300]
            outcomes["failed"].append((name, f"{type(error).__name__}: {text} [{Path(where.filename).name}:{where.lineno}]"))
            continue
        outcomes[outcome].append((name, detail))
    elapsed = time.perf_counter() - started

    counts = {key: len(outcomes[key]) for key in (support.OK, support.REFUSED, "not-runnable", "failed")}
    print(f"{len(names)} cases in {elapsed:.1f} s: " + " / ".join(f"{key} {count}" for key, count in counts.items()))
    for key in ("failed",) + (("refused", "not-runnable") if args.verbose else ()):
        if outcomes[key]:
            print(f"\n{key}:")
            for name, reason in outcomes[key]:
                print(f"  {name}: {reason}")
    return 1 if outcomes["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
