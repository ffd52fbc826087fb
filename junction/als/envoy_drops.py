"""Envoy's own count of access-log entries it could not send, as missing data.

Envoy's gRPC access logger counts, under ``access_logs.grpc_access_log.`` (Envoy docs,
"Access logging > Statistics"): ``logs_written`` (entries taken), ``logs_dropped``
(entries dropped because the stream or the buffer was backed up), and since 1.39
``grpc_entries_flushed`` and ``grpc_entries_flush_failed`` (a batch that could not be sent,
e.g. the receiver is down; it may be sent on a later flush, so it is not a loss by itself).
The receiver cannot see dropped entries, so :class:`EnvoyDrops` polls the counters
through Envoy's admin API (``/stats?format=json&filter=...``) and records every increase
of ``logs_dropped`` in the windows as missing entries; the canary controller then will not
promote on that window. Entries Envoy wrote to a stream whose receiver died before reading
them count as flushed and are lost silently; the API is lossy by design (als.proto).

A counter that goes down (Envoy restarted) is taken as a new baseline, not as drops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from junction.als.windows import Windows

__all__ = ["DROPPED_STAT", "WRITTEN_STAT", "EnvoyDrops", "fetch_counters"]

log = logging.getLogger("junction.als")

DROPPED_STAT = "access_logs.grpc_access_log.logs_dropped"
WRITTEN_STAT = "access_logs.grpc_access_log.logs_written"
FLUSH_FAILED_STAT = "access_logs.grpc_access_log.grpc_entries_flush_failed"


async def fetch_counters(admin: str, timeout: float = 1.0) -> dict[str, int]:
    """The gRPC access logger's counters from Envoy's admin at ``host:port``."""
    url = f"http://{admin}/stats?format=json&filter=%5Eaccess_logs%5C.grpc_access_log%5C."
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as s, s.get(url) as resp:
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json(content_type=None)
    out: dict[str, int] = {}
    for stat in data.get("stats", ()):
        name, value = stat.get("name"), stat.get("value")
        if isinstance(name, str) and isinstance(value, int):
            out[name] = value
    return out


class EnvoyDrops:
    """Call :meth:`poll` periodically; increases of ``logs_dropped`` go to the windows."""

    def __init__(self, windows: Windows, admin: Callable[[], str | None]) -> None:
        self._windows = windows
        self._admin = admin
        self._last: int | None = None
        self.dropped = 0
        self.written = 0
        self.flush_failed = 0
        self.error: str | None = None

    async def poll(self) -> None:
        admin = self._admin()
        if not admin:
            return
        try:
            counters = await fetch_counters(admin)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            message = f"Envoy admin {admin} unreadable: {exc or type(exc).__name__}"
            if message != self.error:
                log.warning("%s (Envoy's ALS drops unknown meanwhile)", message)
            self.error = message
            return
        self.error = None
        self.flush_failed = counters.get(FLUSH_FAILED_STAT, 0)
        self.update(counters.get(DROPPED_STAT, 0), counters.get(WRITTEN_STAT, 0))

    def update(self, dropped: int, written: int) -> int:
        """Take new counter values; returns the drops newly recorded as missing."""
        self.written = written
        last, self._last = self._last, dropped
        if last is None or dropped < last:
            return 0  # first reading, or Envoy restarted: a new baseline
        new = dropped - last
        if new:
            self.dropped += new
            self._windows.note_missing(new)
        return new

    def status(self) -> dict[str, Any]:
        return {
            "logs_dropped_seen": self.dropped,
            "logs_written": self.written,
            "grpc_entries_flush_failed": self.flush_failed,
            "error": self.error,
        }
