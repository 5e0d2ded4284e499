"""One exception hierarchy for the whole package.

Every error names the value and the rule it broke, so a user can fix the input without
reading the code (``capacity_tpa(=-5) must be >= 0``).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "DataError",
    "MassBalanceError",
    "OutputError",
    "RetwinError",
    "ScenarioError",
]


class RetwinError(Exception):
    """Base class of every error raised on purpose by retwin."""


class ScenarioError(RetwinError):
    """A scenario, a change or a model file is invalid.

    ``problems`` holds one ``(path, message)`` pair per problem, so a caller can show each
    on its own line (the CLI) or map it to a field (the HTTP service).
    """

    def __init__(self, problems: list[tuple[str, str]] | str) -> None:
        if isinstance(problems, str):
            problems = [("", problems)]
        # A message may quote the bad input: keep each problem one printable line of bounded
        # length that UTF-8 can encode, whatever that input held (newlines, terminal escapes,
        # lone surrogates, megabytes).
        self.problems: list[tuple[str, str]] = [
            (_clip(printable(p), 500), _clip(printable(m), 4000)) for p, m in problems]
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        """One human-readable line per problem, ``path: message``."""
        return [f"{p}: {m}" if p else m for p, m in self.problems]

    def __reduce__(self) -> tuple[Any, ...]:
        # raised in a worker process, it reaches the submitting process as it was raised
        return (type(self), (self.problems,), self.__dict__)


class OutputError(ScenarioError):
    """An output cannot be written where asked: something that is not retwin's to replace is
    in the way (a user's file or folder), replacing an earlier output needs ``force``, or the
    file system refused (read-only, no space, a file where a folder should be).

    The path is the user's choice, so this is bad input (a :class:`ScenarioError`; the CLI
    exits with code 2). ``path`` is the output as given, ``reason`` says what is wrong with
    it, and ``replaceable`` is True when asking to replace (``--force``) would let the write
    go ahead.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, *,
                 replaceable: bool = False) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        self.replaceable = replaceable
        super().__init__([(self.path, reason)])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason), self.__dict__)


class DataError(RetwinError):
    """A reference-data table is missing, corrupt, or lacks a referenced key."""


class MassBalanceError(RetwinError):
    """A run did not close its mass balance; names the worst residual."""


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\n``, ``\\ud800``):
    one line of valid UTF-8, safe to print and to store."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if _unprintable(c) else c
                   for c in text)


def _unprintable(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o < 0xE000


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
