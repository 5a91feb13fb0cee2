"""Patterns written as the formulas they match, and a matcher that says why a site is not one.

In the spirit of onnxscript's rewriter (`pattern` / `check` / `rewrite`, `MatchResult.fail`):

    X = Var("x")
    ERF_GELU_GATE = Op("Add", Op("Erf", AnyOf(Op("Div", X, Const(SQRT_2)), Op("Mul", X, Const(1 / SQRT_2)))), Const(1.0))

`match(pattern, tensor, ctx)` walks from `tensor` — the pattern's result — back through the
producers. `Var(name)` matches any tensor and binds it: every use of one name must be the same
tensor. `Const(value)` matches a scalar constant within `rtol` of `value` (any scalar when
`value` is None), bound under `name` if given. `Op(op, *inputs, attrs={...})` matches a node of
that op whose inputs match in order, or in either order for commutative binary ops; `AnyOf`
takes the first alternative that matches. Every tensor *inside* the pattern must be owned (read
once, not a graph output), so its nodes can go when the result is rewired; the result itself
and the `Var`s may have other readers. The outcome is a `Match` (bindings, nodes) or a `Fail`
with the reason — a value, not an exception — which the rules log as their near miss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import onnx_graphsurgeon as gs

from graphopt import graph_queries
from graphopt_plugins.fuse._pattern import is_close, owned, scalar
from graphopt_plugins.fuse.rule import FuseContext

__all__ = ["Var", "Const", "Op", "AnyOf", "Match", "Fail", "match"]

COMMUTATIVE = frozenset({"Add", "Mul", "Min", "Max"})


@dataclasses.dataclass(frozen=True)
class Var:
    name: str


@dataclasses.dataclass(frozen=True)
class Const:
    value: float | None = None
    name: str | None = None
    rtol: float = 1e-4


@dataclasses.dataclass(frozen=True, init=False)
class Op:
    """A node of `op` whose inputs match `inputs`. `name` binds its output tensor (a `Var` of that
    name then means this tensor); `readers` is how many nodes of the pattern read it; `partial`
    lets the node have more inputs than the pattern names (ReduceMean's axes input from 18)."""

    op: str
    inputs: tuple
    attrs: tuple  # ((name, value), ...): attributes the node must have, floats compared closely
    name: str | None
    readers: int
    partial: bool

    def __init__(self, op: str, *inputs: "Pattern", attrs: dict | None = None, name: str | None = None,
                 readers: int = 1, partial: bool = False):
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "attrs", tuple(sorted((attrs or {}).items())))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "readers", readers)
        object.__setattr__(self, "partial", partial)


@dataclasses.dataclass(frozen=True, init=False)
class AnyOf:
    alternatives: tuple

    def __init__(self, *alternatives: "Pattern"):
        object.__setattr__(self, "alternatives", alternatives)


Pattern = Union[Var, Const, Op, AnyOf]


@dataclasses.dataclass
class Match:
    """A site: what each `Var`/named `Const` bound, and the pattern's nodes (result's producer last)."""

    bindings: dict[str, Any]
    nodes: list[gs.Node]

    def __getitem__(self, name: str) -> Any:
        return self.bindings[name]

    def __bool__(self) -> bool:
        return True


@dataclasses.dataclass
class Fail:
    """Not a site, and why."""

    reason: str

    def __bool__(self) -> bool:
        return False


def match(pattern: Pattern, tensor: gs.Tensor, ctx: FuseContext, *, owned_inside: bool = True) -> Match | Fail:
    """Whether `tensor` is computed by `pattern`; `owned_inside=False` only recognises a form (its
    inner tensors may have other readers), for a rule that must leave it be rather than rewrite it."""
    return _match(pattern, tensor, Match({}, []), ctx, owned_inside, top=True)


def _match(pattern: Pattern, tensor: gs.Tensor, sofar: Match, ctx: FuseContext, owned_inside: bool, top: bool) -> Match | Fail:
    if isinstance(pattern, Var):
        bound = sofar.bindings.get(pattern.name)
        if bound is None:
            return Match({**sofar.bindings, pattern.name: tensor}, sofar.nodes)
        return sofar if bound is tensor else Fail(f"'{tensor.name}' is not the same {pattern.name} as '{bound.name}'")
    if isinstance(pattern, Const):
        value = scalar(tensor)
        if value is None:
            return Fail(f"'{tensor.name}' is not a scalar constant")
        if pattern.value is not None and not is_close(value, pattern.value, pattern.rtol):
            return Fail(f"the constant {value:g} is not {pattern.value:g}")
        return Match({**sofar.bindings, pattern.name: value}, sofar.nodes) if pattern.name else sofar
    if isinstance(pattern, AnyOf):
        failures = []
        for alternative in pattern.alternatives:
            found = _match(alternative, tensor, sofar, ctx, owned_inside, top)
            if found:
                return found
            failures.append(found.reason)
        return Fail(" / ".join(dict.fromkeys(failures)))
    node = graph_queries.producer(tensor)
    if node is None or node.op != pattern.op:
        return Fail(f"'{tensor.name}' is not computed by {pattern.op}")
    if owned_inside and not top and not owned(tensor, ctx, readers=pattern.readers):
        return Fail(f"'{tensor.name}' has readers outside the pattern")
    if pattern.name and pattern.name in sofar.bindings and sofar.bindings[pattern.name] is not tensor:
        return Fail(f"'{tensor.name}' is not the same {pattern.name} as '{sofar.bindings[pattern.name].name}'")
    for name, expected in pattern.attrs:
        actual = node.attrs.get(name)
        if actual is None or (actual != expected and not (isinstance(expected, float) and is_close(float(actual), expected))):
            return Fail(f"{node.op} '{node.name}' has {name}={actual}, not {expected}")
    if len(node.inputs) != len(pattern.inputs) and not (pattern.partial and len(node.inputs) > len(pattern.inputs)):
        return Fail(f"{node.op} '{node.name}' has {len(node.inputs)} inputs, not {len(pattern.inputs)}")
    orders = [node.inputs]
    if pattern.op in COMMUTATIVE and len(node.inputs) == 2:
        orders.append(node.inputs[::-1])
    failure = Fail("")
    for inputs in orders:
        found: Match | Fail = sofar
        for sub_pattern, sub_tensor in zip(pattern.inputs, inputs):
            found = _match(sub_pattern, sub_tensor, found, ctx, owned_inside, top=False)
            if not found:
                break
        if found:
            bindings = {**found.bindings, pattern.name: tensor} if pattern.name else found.bindings
            return Match(bindings, found.nodes + [node])
        failure = found
    return failure
