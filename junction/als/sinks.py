"""Where access-log records go: JSON lines (orjson) to stdout or to a size-rotated file.

A sink is one small class implementing :class:`Sink` (``write`` a batch, ``flush``,
``close``); another destination (Kafka, a database) is one new module with one such class.
Sinks run on their own thread behind a bounded queue (:class:`SinkRunner`), so a slow disk
or a stalled broker never holds up the receiver's event loop, and hence never Envoy: when
the queue is full the batch is dropped and counted.

File format: one JSON object per line, the fields of
:class:`~junction.als.record.LogRecord` (``t``, ``node``, ``route``, ``cluster``,
``status``, ``ms``, ``reset``, ``method``, ``authority``, ``path``, ``decision``,
``version``). ``junction report`` reads it back.

Rotation works like Python's ``RotatingFileHandler``: when a write would take the file past
``max_bytes``, ``PATH`` becomes ``PATH.1`` (``PATH.1`` becomes ``PATH.2``...) and the
oldest beyond ``backups`` is removed; a batch is never split across files.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from junction.als.errors import SinkError
from junction.als.record import LogRecord

__all__ = ["JsonLinesSink", "RotatingFile", "Sink", "SinkRunner", "rotated_paths"]

log = logging.getLogger("junction.als")

_OPTS = orjson.OPT_APPEND_NEWLINE


class Sink(abc.ABC):
    """A destination for batches of records. Called from one thread at a time."""

    #: Shown in /als and in errors (``jsonl:/var/log/junction/access.jsonl``).
    name: str

    @abc.abstractmethod
    def write(self, records: Sequence[LogRecord]) -> None:
        """Write a batch; raise :class:`SinkError` (or OSError) when it cannot."""

    def flush(self) -> None:  # noqa: B027 - optional hook; most sinks have nothing to flush
        """Push buffered data out (called when the queue runs empty, and at close)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""


class RotatingFile:
    """An append-only byte file rotated by size (see the module docstring); ``path`` "-"
    writes to stdout and never rotates."""

    def __init__(self, path: str, *, max_bytes: int = 100 << 20, backups: int = 5) -> None:
        if max_bytes < 1 or backups < 0:
            raise SinkError(f"{path}: need max_bytes >= 1 and backups >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._file: IO[bytes] | None = None
        self._size = 0
        if path != "-":
            parent = Path(path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(f"{path}: cannot create {parent}: {exc.strerror}") from None
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout.buffer
            return
        try:
            self._file = open(self.path, "ab", buffering=1 << 20)  # noqa: SIM115 - kept open
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot open for appending: {exc.strerror}") from None
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        assert self._file is not None
        if self.path != "-" and self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i + 1}")
        if self.backups:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self.rotations += 1
        self._open()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self.path != "-":
                self._file.close()
            self._file = None


def rotated_paths(path: str) -> list[Path]:
    """``PATH`` and its rotated files, oldest first (``PATH.N`` ... ``PATH.1``, ``PATH``)."""
    base = Path(path)
    found = []
    for candidate in base.parent.glob(base.name + ".*"):
        suffix = candidate.name[len(base.name) + 1 :]
        if suffix.isdigit():
            found.append((int(suffix), candidate))
    out = [p for _, p in sorted(found, reverse=True)]
    if base.exists():
        out.append(base)
    return out


def dump_lines(objects: Iterable[Any]) -> bytes:
    """JSON lines of ``objects`` (dataclasses, dicts) in one bytes object."""
    return b"".join(orjson.dumps(o, option=_OPTS) for o in objects)


class JsonLinesSink(Sink):
    """Records as JSON lines to a rotated file, or to stdout (``path`` "-")."""

    def __init__(self, path: str, *, max_bytes: int = 100 << 20, backups: int = 5) -> None:
        self.name = "jsonl:" + ("stdout" if path == "-" else path)
        self._file = RotatingFile(path, max_bytes=max_bytes, backups=backups)

    @property
    def rotations(self) -> int:
        return self._file.rotations

    def write(self, records: Sequence[LogRecord]) -> None:
        self._file.write(dump_lines(records))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class SinkRunner:
    """Runs sinks on one thread behind a queue of at most ``max_batches`` batches.

    :meth:`submit` never blocks: a full queue drops the batch and counts its records in
    :attr:`dropped`. A sink that raises is counted in :attr:`errors` (logged once per
    distinct message) and keeps getting later batches: a full disk may clear.
    """

    def __init__(self, sinks: Sequence[Sink], *, max_batches: int = 256) -> None:
        self.sinks = tuple(sinks)
        self._queue: queue.Queue[Sequence[LogRecord] | None] = queue.Queue(max_batches)
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._last_error: dict[str, str] = {}

    def start(self) -> None:
        if self.sinks and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="als-sinks", daemon=True)
            self._thread.start()

    def submit(self, records: Sequence[LogRecord]) -> bool:
        """Queue a batch for every sink; False (and counted) when the queue is full."""
        if not self.sinks or not records:
            return True
        try:
            self._queue.put_nowait(records)
        except queue.Full:
            self.dropped += len(records)
            return False
        return True

    def _run(self) -> None:
        while True:
            try:
                batch = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._each("flush")
                continue
            if batch is None:
                return
            for sink in self.sinks:
                try:
                    sink.write(batch)
                except (SinkError, OSError) as exc:
                    self._failed(sink, exc)
            self.written += len(batch)
            if self._queue.empty():
                self._each("flush")

    def _each(self, method: str) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)()
            except (SinkError, OSError) as exc:
                self._failed(sink, exc)

    def _failed(self, sink: Sink, exc: BaseException) -> None:
        self.errors += 1
        message = str(exc)
        if self._last_error.get(sink.name) != message:
            self._last_error[sink.name] = message
            log.error("sink %s failed: %s (records are being lost)", sink.name, message)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close every sink."""
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
            self._thread = None
        self._each("close")

    def status(self) -> dict[str, Any]:
        return {
            "sinks": [s.name for s in self.sinks],
            "written": self.written,
            "dropped": self.dropped,
            "errors": self.errors,
            "queued_batches": self._queue.qsize(),
            "last_errors": dict(self._last_error),
        }
