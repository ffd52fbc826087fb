"""Talking to Consul: where it is, how the blocking loops wait and back off, what an answer
must look like. Used by the sources in :mod:`junction.catalog.consul` and by the canary's
Consul KV store (:mod:`junction.canary.store`).

Consul's blocking-query rules
(https://developer.hashicorp.com/consul/api-docs/features/blocking) are in
:func:`next_index`; the rate limit is a token bucket of burst 2 (:class:`TokenBucket`);
failures back off with full jitter (:class:`Backoff`). A read failing with one of
:data:`TRANSIENT_ERRORS` is retried; :meth:`ConsulEndpoint.describe` names it in one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio

from junction.catalog.errors import CatalogError

__all__ = [
    "MAX_WAIT",
    "TRANSIENT_ERRORS",
    "Backoff",
    "BadResponse",
    "ConsulEndpoint",
    "ConsulSettingError",
    "TokenBucket",
    "WatchTiming",
    "next_index",
    "parse_duration",
    "parse_index",
    "split_address",
    "watch_timing",
]

#: Consul caps ``wait`` at 10 minutes (blocking queries doc).
MAX_WAIT = 600.0


class ConsulSettingError(CatalogError):
    """A Consul source was configured with an unusable address, key or timing."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` sleeps ``uniform(0, cap_n)`` where
    ``cap_n = min(maximum, initial * 2**n)``. Jitter keeps the replicas of the control plane
    (one per Envoy) from reconnecting to a recovering Consul in lockstep.
    """

    initial: float = 0.1
    maximum: float = 5.0

    def cap(self, attempt: int) -> float:
        return min(self.maximum, self.initial * 2.0 ** min(attempt, 64))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return self.cap(attempt) * rand()


class TokenBucket:
    """The rate limit Consul asks blocking-query loops to apply: a token bucket of burst 2.

    Each read takes a token; one token comes back every ``interval`` seconds. A quiet loop
    always has a token (reads take seconds to minutes), so changes are delivered at once; a
    loop whose data churns degrades to one read per ``interval`` instead of a busy loop.
    """

    def __init__(
        self, interval: float, burst: int = 2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """Take a token; return how many seconds to wait before using it (0.0: go now)."""
        if self._interval <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens * self._interval


def next_index(previous: int, returned: int) -> int:
    """The index to block on next, given the one held and the ``X-Consul-Index`` returned.

    Lower than before: reset to 0, so the next read does not block and re-reads everything.
    Otherwise at least 1: an index of 0 would make every read return at once.
    """
    if returned < previous:
        return 0
    return max(returned, 1)


@dataclass(frozen=True, slots=True)
class WatchTiming:
    """How the blocking loops wait. Tests use a short ``wait`` and a fast ``rate_interval``."""

    #: The ``wait`` of each blocking read, in seconds (Consul: default 5 min, max 10 min).
    wait: float = 30.0
    #: One read token comes back every ``rate_interval`` seconds (bucket of burst 2).
    rate_interval: float = 1.0
    backoff: Backoff = field(default_factory=Backoff)
    #: Added to wait + wait/16 (Consul's jitter) to bound every request, so a connection
    #: that dies silently is noticed.
    slack: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.wait <= MAX_WAIT:
            raise ConsulSettingError(f"wait must be in (0, {MAX_WAIT:g}] seconds, not {self.wait}")
        if self.rate_interval < 0 or self.slack <= 0:
            raise ConsulSettingError("rate_interval must be >= 0 and slack > 0")

    @property
    def wait_param(self) -> str:
        # Milliseconds: Go's time.ParseDuration takes "1500ms" but not "1.5e+03s".
        return f"{max(1, round(self.wait * 1000))}ms"

    @property
    def request_timeout(self) -> float:
        return self.wait + self.wait / 16 + self.slack


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration as Consul writes them: ``"30s"``, ``"5m"``, ``"1m30s"``."""
    if not text or _DURATION.sub("", text) != "":
        raise ConsulSettingError(f"{text!r} is not a duration like 30s, 500ms or 5m")
    return sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(text))


def watch_timing(timing: WatchTiming | None, wait: str | float | None) -> WatchTiming:
    """``timing`` (default: :class:`WatchTiming`) with ``wait`` (a Go duration or
    seconds), when given."""
    timing = timing or WatchTiming()
    if wait is None:
        return timing
    seconds = parse_duration(wait) if isinstance(wait, str) else float(wait)
    return dataclasses.replace(timing, wait=seconds)


class BadResponse(CatalogError):
    """Consul answered something we cannot use (shape, index header)."""


# Everything a Consul read can fail with that is worth retrying. py-consul raises
# ConsulException for 5xx, 4xx (ACLPermissionDenied...) and undecodable bodies.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
    consul.ConsulException,
    BadResponse,
)


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8500"``, ``"[::1]:8500"`` or ``"consul.local"`` -> host and port."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port or 8500
    except ValueError:
        host = None
    if not host or parts.path not in ("", "/"):
        raise ConsulSettingError(f"consul address {address!r} is not HOST:PORT")
    return host, port


class ConsulEndpoint:
    """Where Consul is and how to talk to it; makes py-consul clients."""

    def __init__(
        self, address: str, token: str | None, scheme: str, verify: bool | str, timing: WatchTiming
    ) -> None:
        if "://" in address:
            scheme = urlsplit(address).scheme
        if scheme not in ("http", "https"):
            raise ConsulSettingError(f"consul scheme must be http or https, not {scheme!r}")
        self.address = address
        host, self.port = split_address(address)
        self.host = f"[{host}]" if ":" in host else host  # py-consul pastes it into a URL
        self.token = token
        self.scheme = scheme
        self.verify = verify
        self.timing = timing

    def client(self) -> consul.aio.Consul:
        """A new client; its aiohttp session must be closed (``await client.close()``)."""
        with warnings.catch_warnings():
            # py-consul 1.8 builds its aiohttp connector with arguments aiohttp deprecates
            # (verify_ssl, ssl_context); the warning is about py-consul, not about us.
            warnings.simplefilter("ignore", DeprecationWarning)
            client = consul.aio.Consul(
                host=self.host,
                port=self.port,
                token=self.token,
                scheme=self.scheme,
                verify=self.verify,
                # One connection per watched service is held by its blocking read; the
                # aiohttp default of 100 would starve the 101st. py-consul treats 0 as
                # "default", so a large number stands for "no limit".
                connections_limit=100_000,
                connections_timeout=self.timing.request_timeout,
            )
        if self.token is not None:
            # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; ours must win.
            client.token = self.token
        return client

    def describe(self, exc: BaseException) -> str:
        """A one-line message for a failed read, naming the address."""
        where = f"consul at {self.address}"
        # Before ClientConnectorError (their base): Consul is reachable, TLS is the problem.
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return f"{where} presented a certificate that is not trusted: {exc.certificate_error}"
        if isinstance(exc, aiohttp.ClientSSLError):
            return f"{where}: the TLS handshake failed: {exc.os_error}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return f"{where} is unreachable: {exc.os_error.strerror or exc.os_error}"
        if isinstance(exc, asyncio.TimeoutError):
            return f"{where} did not answer within {self.timing.request_timeout:g}s"
        if isinstance(exc, aiohttp.ClientError | OSError):
            return f"{where} dropped the connection: {exc or type(exc).__name__}"
        if isinstance(exc, consul.ACLPermissionDenied):
            return f"{where} denied access (does the ACL token allow this read?): {exc}"
        if isinstance(exc, BadResponse):
            return f"{where} answered something unusable: {exc}"
        return f"{where} answered an error: {exc}"


def parse_index(raw: Any) -> int:
    """An ``X-Consul-Index`` header as an int (a bad one is a transient bad response)."""
    # Consul's index is a uint64; a negative one would read as "went backwards" forever.
    try:
        index = int(raw)
    except (TypeError, ValueError):
        index = -1
    if index < 0:
        raise BadResponse(f"X-Consul-Index {raw!r} is not a non-negative integer")
    return index
