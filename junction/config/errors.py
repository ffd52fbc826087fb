"""Config errors: every problem names the path in the YAML document (and the line when known)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from junction.errors import JunctionError

__all__ = ["ConfigError", "Problem", "format_path"]


def format_path(parts: Sequence[str | int]) -> str:
    """``("route", "domain", 1)`` -> ``route.domain[1]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document.

    ``path`` is dotted, with the user's own (kebab-case) keys, e.g.
    ``route.cluster.web-api-go.weight``; list items are ``[i]``.
    """

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path or '<document>'}: {self.message}"


class ConfigError(JunctionError):
    """A document was rejected. ``problems`` lists every problem found, not just the first."""

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        """One line per problem, prefixed with where the document came from."""
        return "\n".join(f"{self.origin}: {p}" for p in self.problems)
