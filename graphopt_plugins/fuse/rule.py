"""What a fusion rule is, and the context it rewrites in.

A rule rewrites every site of its pattern in one graph level and returns how many it rewrote.
It matches by walking from an anchor node through `graph_queries.producer` / `consumers` (O(uses),
never a whole-graph scan per site), and where a site does not match it calls
`ctx.near_miss(node, reason)` and moves on: a failed match is a reason, not an exception.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["Rule", "FuseContext", "LevelMembership", "STANDARD", "ONNXRUNTIME"]

logger = logging.getLogger(__name__.rsplit(".", 1)[0])  # graphopt_plugins.fuse

STANDARD = "onnx"  # standard ONNX ops only: the result runs on any runtime
ONNXRUNTIME = "onnxruntime"  # com.microsoft contrib ops allowed too


class LevelMembership:
    """`id(node) in membership`: whether a node belongs to one graph level, without a set of the
    level's nodes built per rule and round (that cost a scan of the graph per rule per round).

    `level_of` maps every node of the model, at any level, to its level's index, holding the node
    too so that no id is reused while the pass runs. A node missing from it was created by the
    rules of the level being rewritten, since only that level changes while its rules run.
    """

    def __init__(self, level_of: dict[int, tuple[int, gs.Node]], level: int):
        self._level_of = level_of
        self._level = level

    def __contains__(self, node_id: int) -> bool:
        entry = self._level_of.get(node_id)
        return entry is None or entry[0] == self._level


@dataclasses.dataclass
class FuseContext:
    """Per graph level: the opset, the deployment target, and fresh names for new tensors."""

    opset: int
    target: str
    graph: gs.Graph
    _counter: itertools.count = dataclasses.field(default_factory=itertools.count)
    _taken: set[str] = dataclasses.field(default_factory=set)
    level_members: LevelMembership | None = None  # None: membership is computed from graph.nodes
    _near_misses: set[tuple] = dataclasses.field(default_factory=set)
    # {(what, op, opset it needs): sites} rules matched but this opset has no op for; shared by all levels
    left_unfused: Counter = dataclasses.field(default_factory=Counter)
    _unfused_sites: set[int] = dataclasses.field(default_factory=set)

    def local_nodes(self) -> LevelMembership | set[int]:
        """What `id(node) in ...` asks of: is the node one of this graph level's? (see `LevelMembership`)"""
        if self.level_members is not None:
            return self.level_members
        return {id(node) for node in self.graph.nodes}

    @property
    def allows_contrib_ops(self) -> bool:
        return self.target == ONNXRUNTIME

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return any(output is tensor for output in self.graph.outputs)

    def fresh_name(self, hint: str) -> str:
        """A tensor/node name not used anywhere in the model (names must stay unique on export)."""
        while True:
            name = f"{hint}__fuse{next(self._counter)}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def constant(self, hint: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.fresh_name(hint), np.ascontiguousarray(values))

    def variable(self, hint: str, dtype=None, shape=None) -> gs.Variable:
        return gs.Variable(self.fresh_name(hint), dtype=dtype, shape=shape)

    def near_miss(self, rule: str, node: gs.Node, reason: str) -> None:
        """Logs, at debug level, why `rule` did not fire at `node` (`--debug` shows these).

        Once per site and reason: every round of the fix point revisits the sites that did not
        match, and the log would otherwise repeat them once per round.
        """
        site = (rule, node.name or id(node), reason)
        if site in self._near_misses:
            return
        self._near_misses.add(site)
        logger.debug("fuse.%s: %s '%s' not rewritten: %s", rule, node.op, node.name, reason)


    def leave_unfused(self, rule: str, node: gs.Node, what: str, op: str, needs: int) -> None:
        """Records a site `rule` matched but cannot rewrite into `op` at this opset (once per site),
        for the pass's warnings, and logs it as a near miss."""
        if id(node) not in self._unfused_sites:
            self._unfused_sites.add(id(node))
            self.left_unfused[(what, op, needs)] += 1
        self.near_miss(rule, node, f"{what}: {op} needs opset {needs}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A named rewrite: `apply(graph_level, ctx) -> sites rewritten`.

    `name` is what `--set fuse.rules=…` / `fuse.skip=…` select and the report counts.
    The rule only runs where the model's default-domain opset is at least `min_opset` and,
    when `needs_contrib_ops`, only under `fuse.target=onnxruntime`.
    """

    name: str
    apply: Callable[[gs.Graph, FuseContext], int]
    min_opset: int = 1
    needs_contrib_ops: bool = False
    description: str = ""

    def enabled(self, ctx: FuseContext) -> bool:
        return ctx.opset >= self.min_opset and (ctx.allows_contrib_ops or not self.needs_contrib_ops)
