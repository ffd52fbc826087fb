"""Envoy's virtual-host selection, mirrored for the decision service.

The decision service sees ``:authority`` and ``:path`` and must attribute a request to the
same route Envoy matched. Envoy's rules (RouteConfiguration ``VirtualHost.domains``):
exact domains first, then suffix wildcards (``*.example.com``, longest first), then prefix
wildcards (``example.*``, longest first), then ``*``; a wildcard never matches the empty
string; matching is case-insensitive; the port is ignored (translation sets
``ignore_port_in_host_matching``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["HostMatcher", "strip_port"]

T = TypeVar("T")


def strip_port(authority: bytes) -> bytes:
    """``example.com:8000`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``; lowercased."""
    host = authority.lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end >= 0 else host
    colon = host.rfind(b":")
    if colon >= 0 and host[colon + 1 :].isdigit():
        return host[:colon]
    return host


class HostMatcher(Generic[T]):
    """Maps an ``:authority`` to the value of the virtual host Envoy would pick."""

    def __init__(self, hosts: Iterable[tuple[Iterable[str], T]]) -> None:
        self._exact: dict[bytes, T] = {}
        suffixes: list[tuple[bytes, T]] = []
        prefixes: list[tuple[bytes, T]] = []
        self._default: T | None = None
        for domains, value in hosts:
            for domain in domains:
                d = domain.lower().encode()
                if d == b"*":
                    self._default = value
                elif d.startswith(b"*"):
                    suffixes.append((d[1:], value))
                elif d.endswith(b"*"):
                    prefixes.append((d[:-1], value))
                else:
                    self._exact.setdefault(d, value)
        # Longest wildcard first, as Envoy does.
        self._suffixes = sorted(suffixes, key=lambda kv: -len(kv[0]))
        self._prefixes = sorted(prefixes, key=lambda kv: -len(kv[0]))
        self._cache: dict[bytes, T | None] = {}

    def match(self, authority: bytes) -> T | None:
        found = self._cache.get(authority, _MISS)
        if found is not _MISS:
            return found  # type: ignore[return-value]
        value = self._match(strip_port(authority))
        if len(self._cache) >= 4096:  # bounded: authorities come from clients
            self._cache.clear()
        self._cache[authority] = value
        return value

    def _match(self, host: bytes) -> T | None:
        exact = self._exact.get(host)
        if exact is not None:
            return exact
        for suffix, value in self._suffixes:
            if len(host) > len(suffix) and host.endswith(suffix):
                return value
        for prefix, value in self._prefixes:
            if len(host) > len(prefix) and host.startswith(prefix):
                return value
        return self._default


_MISS = object()
