"""The `fuse` pass: run the fusion catalogue to a fix point in every graph level."""

from __future__ import annotations

import dataclasses
from collections import Counter

import onnx_graphsurgeon as gs

import graphopt
from graphopt import convert, graph_queries
from graphopt_plugins.fuse.catalogue import RULES, rule_names
from graphopt_plugins.fuse.rule import ONNXRUNTIME, STANDARD, FuseContext, LevelMembership, Rule

__all__ = ["Fuse"]

_TARGETS = (STANDARD, ONNXRUNTIME)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class Fuse(graphopt.Pass):
    """Fuses operators exactly: BN/scale/Pad into Conv/Gemm, MatMul+Add→Gemm, activations, norms, attention.

    Runs every rule of the catalogue (docs/passes/fuse.md lists them, in order) in each graph
    level — If/Loop/Scan bodies and local functions included — round after round until none
    fires. By default it emits standard ONNX ops only, and only those the model's opset has
    (LayerNormalization from 17, Gelu from 20; below that the pattern stays as it is);
    `target=onnxruntime` also allows com.microsoft contrib ops. Refuses nothing: a site that
    does not match is left alone, with the reason logged at debug level. Lossless: outputs
    equal within the per-dtype tolerance (folds reassociate float arithmetic).
    """

    name = "fuse"
    lossless = True
    after = ("cleanup",)

    @dataclasses.dataclass
    class Options:
        rules: str = "all"  # comma-separated rule names to run, or "all"
        skip: str = ""  # comma-separated rule names not to run
        target: str = STANDARD  # "onnx": standard ops only; "onnxruntime": com.microsoft contrib ops too
        max_rounds: int = 16  # rounds of the whole catalogue before giving up on a fix point

        def __post_init__(self):
            known = set(rule_names())
            asked = [] if self.rules.strip() == "all" else _names(self.rules)
            unknown = sorted((set(asked) | set(_names(self.skip))) - known)
            if unknown:
                raise ValueError(f"unknown fuse rule(s) {', '.join(unknown)}; known: {', '.join(rule_names())}")
            if self.target not in _TARGETS:
                raise ValueError(f"target must be one of {', '.join(_TARGETS)}, not {self.target!r}")
            if self.max_rounds < 1:
                raise ValueError("max_rounds must be >= 1")

    def selected_rules(self) -> list[Rule]:
        asked = None if self.options.rules.strip() == "all" else set(_names(self.options.rules))
        skipped = set(_names(self.options.skip))
        return [rule for rule in RULES if (asked is None or rule.name in asked) and rule.name not in skipped]

    def run(self, graph: gs.Graph, ctx: graphopt.PassContext) -> graphopt.PassResult:
        left_unfused: Counter[tuple] = Counter()
        with convert.collector_paused():  # see convert.collector_paused: full collections made big graphs superlinear
            stats = self._fuse(graph, ctx, left_unfused)
        ctx.logger.info("fuse: %s", stats)
        changed = bool(stats)
        if left_unfused:
            stats["warnings"] = [f"{count} {what}: {op} needs opset {needs}, the model has {ctx.opset} (add `opset` "
                                 f"to --passes{f', --set opset.target={needs}' if needs > 17 else ''})"
                                 for (what, op, needs), count in sorted(left_unfused.items())]
            for warning in stats["warnings"]:
                ctx.logger.warning("fuse: %s", warning)
        return graphopt.PassResult(changed=changed, stats=stats)

    def _fuse(self, graph: gs.Graph, ctx: graphopt.PassContext, left_unfused: Counter[tuple]) -> dict:
        rules = self.selected_rules()
        taken = {tensor for owner in graph_queries.iter_graphs(graph) for tensor in owner.tensors()} | {
            node.name for _, node in graph_queries.iter_nodes(graph)
        }
        stats: Counter[str] = Counter()
        levels = list(graph_queries.iter_graphs(graph))
        level_of = {id(node): (index, node) for index, owner in enumerate(levels) for node in owner.nodes}
        for index, owner in enumerate(levels):
            members = LevelMembership(level_of, index)
            level = FuseContext(opset=ctx.opset, target=self.options.target, graph=owner, _taken=taken, level_members=members,
                                left_unfused=left_unfused)
            enabled = [rule for rule in rules if rule.enabled(level)]
            for _ in range(self.options.max_rounds):
                fired = Counter({rule.name: rule.apply(owner, level) for rule in enabled})
                fired = +fired  # drop zero counts
                if not fired:
                    break
                stats.update(fired)
                graph_queries.remove_dead_nodes_in_level(owner)
            # The nodes its rules created, indexed before the next level's rules ask about them.
            level_of.update((id(node), (index, node)) for node in owner.nodes)
        if stats:
            graph_queries.toposort(graph)  # linear; graphsurgeon's toposort took seconds at 100k nodes
        return dict(stats)
