"""graphopt.options: typed parsing from --set text and TOML values, help text, errors."""

import dataclasses
from typing import Literal, Optional

import pytest

from graphopt.errors import UsageError
from graphopt.options import build_options, describe_options, parse_assignment


@dataclasses.dataclass
class Options:
    rank: int = 8  # rank of the factors
    energy: float = 0.9
    per_channel: bool = True
    method: Literal["svd", "whitened"] = "svd"
    skip: tuple[str, ...] = ()
    limit: Optional[int] = None
    mode: str = dataclasses.field(default="static", metadata={"help": "quantization mode"})


def test_text_values_parse_to_the_declared_types():
    parsed = build_options("p", Options, {}, {"rank": "16", "energy": "0.5", "per_channel": "false",
                                              "method": "whitened", "skip": "a, b", "limit": "none"})
    assert parsed == Options(rank=16, energy=0.5, per_channel=False, method="whitened", skip=("a", "b"), limit=None)


def test_typed_values_are_checked_and_text_overrides_them():
    parsed = build_options("p", Options, {"rank": 4, "energy": 1, "skip": ["x"]}, {"rank": "32"})
    assert parsed.rank == 32 and parsed.energy == 1.0 and parsed.skip == ("x",)


@pytest.mark.parametrize("values, text, message", [
    ({}, {"rank": "many"}, "p.rank expects an integer"),
    ({}, {"per_channel": "maybe"}, "p.per_channel expects true or false"),
    ({}, {"method": "qr"}, "p.method must be one of svd, whitened"),
    ({"rank": 1.5}, {}, "p.rank expects an integer"),
    ({"rank": True}, {}, "p.rank expects an integer"),
    ({}, {"nope": "1"}, "unknown option 'p.nope'"),
])
def test_wrong_values_are_usage_errors_naming_the_option(values, text, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        build_options("p", Options, values, text)


def test_help_comes_from_metadata_or_the_trailing_comment():
    infos = {info.name: info for info in describe_options(Options)}
    assert infos["rank"].help == "rank of the factors"
    assert infos["mode"].help == "quantization mode"
    assert infos["rank"].type == "int" and infos["method"].type == "svd|whitened"
    assert infos["energy"].help == ""


def test_parse_assignment():
    assert parse_assignment("quantize.per_channel=true") == ("quantize", "per_channel", "true")
    with pytest.raises(UsageError):
        parse_assignment("quantize=true")
