"""The ordered list of fusion rules `fuse` runs; a rule is added here and nowhere else.

Order matters within a round: simplifications that expose patterns come first (transpose and
reshape chains, no-ops), then folds into weights (BN, per-channel constants, Pad), then the
larger patterns (activations, normalisation, attention). The pass repeats rounds to a fix point.
"""

from __future__ import annotations

from graphopt_plugins.fuse.rule import Rule
from graphopt_plugins.fuse.transpose_chain import merge_transpose_chains

__all__ = ["RULES", "rule_names"]

RULES: tuple[Rule, ...] = (
    Rule("transpose_chain", merge_transpose_chains, description="Transpose∘Transpose merged, or removed when it is the identity"),
)


def rule_names() -> list[str]:
    return [rule.name for rule in RULES]
