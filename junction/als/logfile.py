"""Reading the JSON-lines access log back as :class:`~junction.als.record.LogRecord` s.

The file sink (:mod:`junction.als.sinks`) writes one JSON object per line with the record's
fields (``t``, ``node``, ``route``, ``cluster``, ``status``, ``ms``, ``reset``, ``method``,
``authority``, ``path``, ``decision``, ``version``). :func:`read_log` reads each ``PATH``
given and its rotated files (``PATH.N`` ... ``PATH.1``, ``PATH``: oldest first, so the
records come in the order they were written) and yields, per non-blank line, either the
record or a :class:`BadLine` naming the file, the line number and what is wrong. It never
raises for a line's content: a replay over last week's logs must not stop at one torn
line (a crash mid-write leaves one).

Required: ``t`` and ``ms`` (numbers), ``status`` (an integer 0..999), ``cluster`` (a
non-empty string). The other fields default to "" (``reset``: false), so older or
hand-written logs still read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from junction.als.errors import ReportError
from junction.als.record import LogRecord
from junction.als.sinks import rotated_paths

__all__ = ["BadLine", "log_files", "parse_record", "read_log"]

_TEXT_FIELDS = ("node", "route", "method", "authority", "path", "decision", "version")


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a record: ``path:line: problem``."""

    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


def _number(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name!r} must be a number, got {value!r}")
    return float(value)


def parse_record(obj: Any) -> LogRecord:
    """The record of one decoded line; ValueError names the field that is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    t = _number(obj, "t")
    ms = _number(obj, "ms")
    if ms < 0:
        raise ValueError(f"'ms' must be >= 0, got {ms:g}")
    status = obj.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999:
        raise ValueError(f"'status' must be an HTTP status 0..999, got {status!r}")
    cluster = obj.get("cluster")
    if not isinstance(cluster, str) or not cluster:
        raise ValueError(f"'cluster' must be a non-empty string, got {cluster!r}")
    text = {}
    for name in _TEXT_FIELDS:
        value = obj.get(name, "")
        if not isinstance(value, str):
            raise ValueError(f"{name!r} must be a string, got {value!r}")
        text[name] = value
    reset = obj.get("reset", False)
    if not isinstance(reset, bool):
        raise ValueError(f"'reset' must be true or false, got {reset!r}")
    return LogRecord(
        t=t,
        node=text["node"],
        route=text["route"],
        cluster=cluster,
        status=status,
        ms=ms,
        reset=reset,
        method=text["method"],
        authority=text["authority"],
        path=text["path"],
        decision=text["decision"],
        version=text["version"],
    )


def log_files(paths: Iterable[str]) -> list[Path]:
    """Every file to read, in order: each ``PATH``'s rotated files oldest first, then it.
    :class:`ReportError` names a ``PATH`` with no file at all."""
    out: list[Path] = []
    for p in paths:
        found = rotated_paths(p)
        if not found:
            raise ReportError(f"{p}: no such file")
        out.extend(found)
    return out


def read_log(paths: Iterable[str]) -> Iterator[LogRecord | BadLine]:
    """Records (and bad lines) of ``paths`` in file order; blank lines are skipped.
    :class:`ReportError` when a file cannot be opened or read."""
    for path in log_files(paths):
        try:
            with path.open("rb") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        yield parse_record(orjson.loads(line))
                    except orjson.JSONDecodeError as exc:
                        yield BadLine(str(path), number, f"not JSON ({exc})")
                    except ValueError as exc:
                        yield BadLine(str(path), number, str(exc))
        except OSError as exc:
            raise ReportError(f"{path}: cannot read: {exc.strerror}") from None
