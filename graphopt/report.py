"""The run report (schema `graphopt.report/1`): one entry per pass, the whole document, and
the lines the command line prints of it. Its fields are documented in docs/design.md."""

from __future__ import annotations

import dataclasses

from graphopt.jsonable import to_jsonable

__all__ = ["REPORT_SCHEMA", "pass_entry", "run_report", "brief", "pass_lines", "growth_warnings"]

REPORT_SCHEMA = "graphopt.report/1"


def pass_entry(pass_, registry, nodes: int, size: int | None) -> dict:
    """A pass's entry before it runs: what it is, and the model it receives (`nodes`, `size` bytes)."""
    return {
        "name": pass_.name,
        "plugin": registry.plugin_of(pass_.name) if pass_.name in registry else None,
        "lossless": pass_.lossless,
        # Names from the dataclass: describe_options would parse the source for help text.
        "options": to_jsonable({field.name: getattr(pass_.options, field.name) for field in dataclasses.fields(pass_.options)}),
        "status": "unchanged",
        "changed": False,
        "rolled_back": False,
        "details": {},
        "verification": None,
        "nodes_before": nodes,
        "bytes_before": size,
    }


def run_report(*, version: str, input_summary: dict, output_summary: dict, passes: list[dict], verify: str,
               samples: int, inputs: str, budget, end_to_end: dict | None, warnings: list[str], latency: dict | None = None) -> dict:
    """The whole report of a run that finished."""
    return {
        "schema": REPORT_SCHEMA,
        "graphopt_version": version,
        "input": input_summary,
        "output": output_summary,
        "passes": passes,
        "verification": {
            "mode": verify,
            "samples": samples,
            "inputs": inputs,
            "budget": budget.describe() if budget else None,
            "end_to_end": end_to_end,
        },
        "latency": latency,
        "warnings": list(warnings),
    }


def growth_warnings(input_bytes: int | None, output_bytes: int | None, passes: list[dict]) -> list[str]:
    """Why the output is larger than the input, when it is: the passes that grew it, by how much."""
    if not input_bytes or not output_bytes or output_bytes <= input_bytes:
        return []
    grew = [f"{e['name']} {e['bytes_before']:,} -> {e['bytes_after']:,}" for e in passes
            if e.get("status") == "accepted" and e.get("bytes_before") and e.get("bytes_after") and e["bytes_after"] > e["bytes_before"]]
    return [f"the output ({output_bytes:,} bytes) is larger than the input ({input_bytes:,}): grown by "
            f"{', '.join(grew) or 'the final export'} (typically: weights the input computes when it runs, with "
            f"ConstantOfShape, Expand or Tile, are stored once folded, or once another node is folded into them)"]


def brief(details: dict) -> str:
    """A pass's stats on one line: scalars as they are, tables (per-layer lists) by their length."""
    parts = []
    for key, value in details.items():
        if isinstance(value, (list, tuple, dict)):
            if value:
                parts.append(f"{key}: {len(value)} rows in the report")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif value:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def pass_lines(report: dict) -> list[str]:
    """One line per pass: its name, status, time and brief stats."""
    lines = []
    for entry in report["passes"]:
        details = brief(entry["details"])
        lines.append(f"pass {entry['name']}: {entry['status']} in {entry['seconds']:.3f}s" + (f" ({details})" if details else ""))
    return lines
