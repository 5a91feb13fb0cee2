"""Typed pass options: parsed from `--set PASS.OPTION=VALUE` strings and from TOML recipes.

A pass's `Options` is a dataclass; its field types drive parsing and checking, so a wrong
value is a one-line usage error naming the pass, the option and what it expects.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import tokenize
import types
import typing
from typing import Any, Literal, Union

from graphopt.parameter_names import parameter
from graphopt.errors import UsageError, did_you_mean

__all__ = ["OptionInfo", "describe_options", "build_options", "parse_assignment"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# Number types: (values taken as they are, how text is parsed, what the error says is expected).
_NUMBERS = {int: (int, lambda text: int(text, 0), "an integer"), float: ((int, float), float, "a number")}


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: Any
    help: str


def describe_options(options_cls: type) -> list[OptionInfo]:
    """Each option's name, type, default and help (field metadata `help`, else its trailing comment)."""
    hints = typing.get_type_hints(options_cls)
    comments = _trailing_comments(options_cls)
    infos = []
    for field in dataclasses.fields(options_cls):
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        help_text = field.metadata.get("help") or comments.get(field.name, "")
        infos.append(OptionInfo(field.name, _type_name(hints[field.name]), default, help_text))
    return infos


def build_options(pass_name: str, options_cls: type, values: dict[str, Any], text: dict[str, str] | None = None) -> Any:
    """An `options_cls` instance: typed `values` (API, TOML recipe), then `text` (`--set`) on top."""
    hints = typing.get_type_hints(options_cls)
    known = {field.name for field in dataclasses.fields(options_cls)}
    parsed = {}
    for source, from_text in ((values, False), (text or {}, True)):
        for key, raw in source.items():
            if key not in known:
                listing = ", ".join(sorted(known)) or "none"
                raise UsageError(f"unknown option '{pass_name}.{key}'{did_you_mean(key, known)} (options of '{pass_name}': {listing})")
            parsed[key] = _coerce(hints[key], raw, f"{pass_name}.{key}", from_text)
    try:
        return options_cls(**parsed)
    except (TypeError, ValueError) as error:
        raise UsageError(f"bad options for '{pass_name}': {error}") from error


def parse_assignment(text: str) -> tuple[str, str, str]:
    """`PASS.OPTION=VALUE` → (pass, option, value)."""
    key, sep, value = text.partition("=")
    pass_name, dot, option = key.strip().partition(".")
    if not sep or not dot or not pass_name or not option:
        raise UsageError(f"{parameter('set_options')} expects PASS.OPTION=VALUE, got '{text}'")
    return pass_name, option.strip(), value.strip()


def _coerce(hint: Any, raw: Any, where: str, from_text: bool) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return raw
    if origin in (Union, types.UnionType):
        if type(None) in args and (raw is None or (from_text and str(raw).lower() in ("none", ""))):
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, raw, where, from_text)
            except UsageError:
                continue  # the next type of the union may take it
        raise UsageError(f"option {where} expects {_type_name(hint)}, got {raw!r}")
    if origin is Literal:
        choices = list(args)
        for choice in choices:
            if raw == choice or (from_text and str(raw) == str(choice)):
                return choice
        raise UsageError(f"option {where} must be one of {', '.join(map(str, choices))}; got {raw!r}")
    if origin in (list, tuple) or hint in (list, tuple):
        item = args[0] if args else str
        items = [part.strip() for part in raw.split(",") if part.strip()] if from_text and isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"option {where} expects a list, got {raw!r}")
        coerced = [_coerce(item, value, where, from_text) for value in items]
        return tuple(coerced) if (origin is tuple or hint is tuple) else coerced
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if from_text and str(raw).lower() in _TRUE | _FALSE:
            return str(raw).lower() in _TRUE
        raise UsageError(f"option {where} expects true or false, got {raw!r}")
    if hint in _NUMBERS:
        accepted, parse, expected = _NUMBERS[hint]
        if isinstance(raw, accepted) and not isinstance(raw, bool):
            return hint(raw)
        with contextlib.suppress(ValueError):
            if from_text:
                return parse(str(raw))
        raise UsageError(f"option {where} expects {expected}, got {raw!r}")
    if hint is str:
        if isinstance(raw, str):
            return raw
        raise UsageError(f"option {where} expects a string, got {raw!r}")
    return raw


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "|".join(map(str, typing.get_args(hint)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None)) + " (optional)"
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"list of {_type_name(args[0]) if args else 'str'}"
    return getattr(hint, "__name__", str(hint))


def _trailing_comments(options_cls: type) -> dict[str, str]:
    """`name: int = 3  # help` → {"name": "help"}: the docs/design.md way of writing option help."""
    try:
        source = inspect.getsource(options_cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string.lstrip("#").strip()
        tree = ast.parse(inspect.cleandoc(source) if source[:1].isspace() else source)
    except (SyntaxError, tokenize.TokenError):
        return {}
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.lineno in comments:
            found[node.target.id] = comments[node.lineno]
    return found
