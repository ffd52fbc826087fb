"""Assignment keys and buckets: where a stable key comes from, and the bucket it falls in.

Experiments: ``bucket(salt, key) = blake2b(salt NUL key) mod 10000`` (the canary uses
Envoy's own hash instead: :mod:`junction.extproc.envoy_hash`): the same in every worker, replica
and restart (Python's ``hash()`` is randomized per process and is never used). Keys are
raw header or cookie bytes; empty, ambiguous (given twice) or over-long keys count as
missing, and the counters say which.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from junction.config.decisions import BUCKETS, KeySource
from junction.extproc.counters import Counters
from junction.extproc.pins import AMBIGUOUS, MALFORMED, parse_cookies

__all__ = ["MAX_KEY", "Hasher", "Headers", "KeyReader", "Request", "bucket", "valid_sticky"]

#: Longest assignment key considered (longer: treated as missing, counted).
MAX_KEY = 1024

#: The request headers the adapters hand over: lowercase name -> every value, raw bytes.
Headers = Mapping[str, list[bytes]]


def bucket(salt: bytes, key: bytes) -> int:
    """The bucket 0..9999 of ``key`` under ``salt`` (what the table computes, for tests and
    tools)."""
    digest = hashlib.blake2b(salt + b"\x00" + key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class KeyReader:
    """Reads a stable key from a header, else a cookie."""

    __slots__ = ("cookie", "header")

    def __init__(self, source: KeySource) -> None:
        self.header = source.header
        self.cookie = source.cookie.encode() if source.cookie else None

    def read(self, req: Request) -> bytes | None:
        if self.header is not None:
            values = req.headers.get(self.header)
            if values:
                if len(values) > 1:
                    req.counters.key_ambiguous += 1
                    return None
                return _bounded_key(values[0], req.counters)
        if self.cookie is not None:
            value = req.cookies().get(self.cookie)
            if value is not None:
                if value is AMBIGUOUS:
                    req.counters.key_ambiguous += 1
                    return None
                return _bounded_key(value, req.counters)
        return None


def _bounded_key(value: bytes, counters: Counters) -> bytes | None:
    if not value:
        return None
    if len(value) > MAX_KEY:
        counters.key_too_long += 1
        return None
    return value


class Request:
    """Per-request scratch: the headers, and the cookies parsed on first use."""

    __slots__ = ("_cookies", "counters", "headers")

    def __init__(self, headers: Headers, counters: Counters) -> None:
        self.headers = headers
        self.counters = counters
        self._cookies: dict[bytes, bytes] | None = None

    def cookies(self) -> dict[bytes, bytes]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get("cookie") or [])
            if MALFORMED in self._cookies:
                self.counters.cookie_malformed += 1
        return self._cookies


class Hasher:
    """``bucket(salt, key)`` with the salt absorbed once per config version."""

    __slots__ = ("_seed",)

    def __init__(self, salt: str) -> None:
        self._seed = hashlib.blake2b(salt.encode() + b"\x00", digest_size=8)

    def bucket(self, key: bytes) -> int:
        h = self._seed.copy()
        h.update(key)
        return int.from_bytes(h.digest(), "big") % BUCKETS


def valid_sticky(value: bytes) -> bool:
    return len(value) == 32 and all(c in b"0123456789abcdef" for c in value)
