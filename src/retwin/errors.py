"""One exception hierarchy for the whole package.

Every error names the value and the rule it broke, so a user can fix the input without
reading the code (``capacity_tpa(=-5) must be >= 0``).
"""

from __future__ import annotations

import re

__all__ = [
    "DataError",
    "MassBalanceError",
    "RetwinError",
    "ScenarioError",
    "printable",
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
        # A message may quote the bad input: keep each problem one printable line that UTF-8
        # can encode, whatever that input held (newlines, terminal escapes, lone surrogates).
        self.problems: list[tuple[str, str]] = [(printable(p), printable(m)) for p, m in problems]
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        """One human-readable line per problem, ``path: message``."""
        return [f"{p}: {m}" if p else m for p, m in self.problems]


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\n``, ``\\ud800``):
    one line of valid UTF-8, safe to print and to store."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class DataError(RetwinError):
    """A reference-data table is missing, corrupt, or lacks a referenced key."""


class MassBalanceError(RetwinError):
    """A run did not close its mass balance; names the worst residual."""
