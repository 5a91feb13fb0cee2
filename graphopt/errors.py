"""The errors graphopt raises, each carrying the exit code the CLI maps it to.

The exit codes are a contract (docs/design.md): 1 verification failed, 2 bad usage or input,
3 a pass or plugin failed internally.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["GraphoptError", "UsageError", "InputError", "VerificationError", "PassError", "PluginError", "PreconditionError",
           "first_line", "did_you_mean"]


def first_line(error: BaseException, limit: int = 300) -> str:
    """A library's exception as one short line for a graphopt message."""
    text = str(error).strip() or type(error).__name__
    return " ".join(text.splitlines()[0].split())[:limit]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`"; did you mean 'fuse'?"` for the closest choice to a misspelled `word`, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class GraphoptError(Exception):
    """Base of every error graphopt raises on purpose; `str()` is the one-line message."""

    exit_code = 3
    # keyword arguments a kind carries beside the message, each an attribute (None when not given)
    details: tuple[str, ...] = ()

    def __init__(self, message: str, *, path: str | None = None, **details):
        super().__init__(message)
        self.message = message
        self.path = path
        unknown = set(details) - set(self.details)
        if unknown:
            raise TypeError(f"{type(self).__name__} takes no {', '.join(sorted(unknown))}")
        for name in self.details:
            setattr(self, name, details.get(name))

    def __str__(self) -> str:
        return f"{self.message} ({self.path})" if self.path else self.message


class UsageError(GraphoptError):
    """Bad command line or API arguments: an unknown pass, option or value."""

    exit_code = 2


class InputError(GraphoptError):
    """A model or data file that cannot be read or is not valid."""

    exit_code = 2


class VerificationError(GraphoptError):
    """The optimized model does not agree with the reference within its tolerance."""

    exit_code = 1
    details = ("report",)


class PassError(GraphoptError):
    """A pass raised, or produced an invalid model."""

    exit_code = 3
    details = ("pass_name",)


class PluginError(GraphoptError):
    """A plugin could not be loaded or registered a pass wrongly."""

    exit_code = 3


class PreconditionError(GraphoptError):
    """A pass cannot handle this model at all (raised by the pass, naming itself and the node).

    The pass manager reports it and goes on without the pass; a site where a pattern merely
    does not match is not an error and is logged at debug level instead.
    """

    exit_code = 3
