"""Envoy's own count of access-log entries it could not send, as missing data.

Envoy's gRPC access logger drops entries when its stream to the receiver is down or backed
up, and counts them in ``access_logs.grpc_access_log.logs_dropped`` (with
``logs_written`` for those sent; Envoy docs, "gRPC access log statistics"). The receiver
cannot see those entries, so :class:`EnvoyDrops` polls the counter through Envoy's admin
API (``/stats?format=json&filter=...``) and records every increase in the windows as
missing entries; the canary controller then will not promote on that window.

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
            "error": self.error,
        }
