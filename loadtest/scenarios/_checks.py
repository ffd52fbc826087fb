"""The pure parts of the load-test scenarios: the loopback guard, per-second tallies, shares
and the checks a run passes or fails on.

No Locust and no I/O here (the guard resolves a name, nothing more): the locustfiles (through
``_scenario.py``), the runner (``run.py``) and the tests all use these, and the tests drive
them directly.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ddsketch import DDSketch

from junction.errors import JunctionError

__all__ = [
    "Check",
    "LoadTestError",
    "RemoteTargetError",
    "ShareRow",
    "Shares",
    "Timeline",
    "parse_weights",
    "require_loopback",
    "share_check",
    "shares",
]

#: The share a check never demands more precisely than (1 %), whatever the sample size:
#: below that, a weighted route's own rounding and a few retried requests are noise.
SHARE_FLOOR = 0.01
#: Fewer samples than this and a share check fails as "not enough evidence" instead of
#: passing by luck (the canary's own rule: never pass on missing data).
MIN_SAMPLES = 100
#: Latency quantiles kept per second and overall (DDSketch: 1 % relative error, bounded
#: memory however long the run).
QUANTILES = (0.5, 0.95, 0.99)


class LoadTestError(JunctionError):
    """A load test cannot run as asked (bad options, an unreachable or remote target)."""


class RemoteTargetError(LoadTestError):
    """A target outside loopback without the explicit ``--allow-remote``."""


def require_loopback(target: str, *, allow_remote: bool, what: str = "target") -> None:
    """Raise :class:`RemoteTargetError` unless every address ``target`` names is loopback.

    ``target`` is a URL (``http://127.0.0.1:8000``) or ``HOST:PORT``. A name is resolved and
    every address it resolves to must be loopback, so ``localhost`` passes and a name that
    also resolves elsewhere does not. Load generated here can hurt a real deployment: aiming
    at one is allowed only with ``allow_remote`` (the runner's and locustfiles'
    ``--allow-remote``), never by default.
    """
    if allow_remote:
        return
    parts = urlsplit(target if "//" in target else f"//{target}")
    host = parts.hostname
    if not host:
        raise LoadTestError(f"{what} {target!r}: no host in it")
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise LoadTestError(f"{what} {target!r}: cannot resolve {host!r} ({exc})") from None
        addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    remote = sorted(str(a) for a in addresses if not a.is_loopback)
    if remote:
        raise RemoteTargetError(
            f"{what} {target!r} is not loopback ({', '.join(remote)}): load tests aim at "
            "127.0.0.1 unless --allow-remote says otherwise (be sure you may load that "
            "deployment)"
        )


def parse_weights(text: str, *, what: str = "--expect") -> dict[str, float]:
    """``"web-api-perl=90,web-api-go=10"`` -> ``{"web-api-perl": 0.9, "web-api-go": 0.1}``.

    Weights are relative (like route weights) and normalised to shares; ``""`` or ``none``
    is an empty mapping (no share check).
    """
    if text.strip().lower() in ("", "none"):
        return {}
    raw: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name or not math.isfinite(weight) or weight < 0:
            raise LoadTestError(f"{what} {text!r}: expected NAME=WEIGHT,... (e.g. perl=90,go=10)")
        if name in raw:
            raise LoadTestError(f"{what} {text!r}: {name!r} given twice")
        raw[name] = weight
    total = sum(raw.values())
    if total <= 0:
        raise LoadTestError(f"{what} {text!r}: the weights add up to 0")
    return {name: weight / total for name, weight in raw.items()}


@dataclass(frozen=True)
class Check:
    """One verdict of a run: what was checked, whether it held, and the figures behind it."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class ShareRow:
    key: str
    count: int
    share: float
    #: Expected share (None: not expected at all, or no expectation given).
    expected: float | None
    #: Allowed |share - expected| (None without an expectation).
    tolerance: float | None
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "share": self.share,
            "expected": self.expected,
            "tolerance": self.tolerance,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Shares:
    """How ``total`` samples (requests, or users) of one group split by key."""

    group: str
    unit: str
    total: int
    rows: tuple[ShareRow, ...]
    checked: bool

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "total": self.total,
            "checked": self.checked,
            "rows": {r.key: r.to_json() for r in self.rows},
        }


def shares(
    group: str,
    counts: Mapping[str, int],
    expected: Mapping[str, float] | None = None,
    *,
    unit: str = "requests",
    z: float = 4.0,
    checked: bool = True,
) -> Shares:
    """Observed shares of ``counts`` against ``expected`` shares (fractions summing to 1).

    Each key's tolerance is ``max(z * sqrt(p (1 - p) / n), SHARE_FLOOR)``: the binomial
    standard error of a share ``p`` over ``n`` independent samples, ``z`` of them wide (4:
    a false alarm about once in 16,000 checks), never tighter than 1 %. A key seen but not
    expected fails; with no expectation every row passes (shares are only reported).
    ``checked=False`` keeps the expectation for the report (and plots) but marks the group
    as not judged.
    """
    total = sum(counts.values())
    keys = list(expected or {}) + sorted(k for k in counts if k not in (expected or {}))
    rows = []
    for key in keys:
        count = counts.get(key, 0)
        share = count / total if total else 0.0
        if not expected:
            rows.append(ShareRow(key, count, share, None, None, True))
            continue
        p = expected.get(key)
        if p is None:
            rows.append(ShareRow(key, count, share, None, None, count == 0))
            continue
        tolerance = max(z * math.sqrt(p * (1 - p) / total), SHARE_FLOOR) if total else 0.0
        rows.append(ShareRow(key, count, share, p, tolerance, abs(share - p) <= tolerance))
    return Shares(group, unit, total, tuple(rows), checked=checked and bool(expected))


def share_check(s: Shares, *, min_samples: int = MIN_SAMPLES) -> Check:
    """The verdict on :func:`shares`: every row within tolerance, on enough samples."""
    name = f"{s.group}: shares match the weights"
    figures = ", ".join(
        f"{r.key} {r.share:.1%}"
        + (f" (expected {r.expected:.1%} ± {r.tolerance:.1%})" if r.expected is not None else "")
        for r in s.rows
    )
    detail = f"{figures}; n = {s.total} {s.unit}"
    if s.total < min_samples:
        return Check(name, False, f"only {s.total} {s.unit} (need {min_samples}): {detail}")
    return Check(name, s.ok, detail)


def at_most(name: str, count: int, limit: int, detail: str) -> Check:
    """``count <= limit``: a budget of failures, violations..."""
    return Check(name, count <= limit, f"{count} (allowed {limit}); {detail}")


@dataclass
class _Second:
    requests: int = 0
    failures: int = 0
    max_ms: float = 0.0
    sketch: DDSketch = field(default_factory=lambda: DDSketch(relative_accuracy=0.01))
    clusters: Counter[str] = field(default_factory=Counter)
    cluster_failures: Counter[str] = field(default_factory=Counter)
    groups: Counter[tuple[str, str]] = field(default_factory=Counter)
    group_failures: Counter[str] = field(default_factory=Counter)


#: The label of a response no upstream answered (Envoy's own 503, a reset, a timeout).
NO_UPSTREAM = "(none)"


class Timeline:
    """Requests by the second they started (``start - t0``): counts, failures, latency
    sketches, and who served them (cluster, and a label within a scenario's group).

    Seconds are keyed by start time so a late answer still counts where its request began
    (the canary check asks "did requests *sent* after the rollback fail?").
    """

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._seconds: dict[int, _Second] = {}
        self.total = _Second()

    def record(
        self,
        start: float,
        latency_ms: float,
        failed: bool,
        cluster: str | None,
        group: str | None = None,
        label: str | None = None,
    ) -> None:
        index = max(0, int(start - self.t0))
        second = self._seconds.get(index)
        if second is None:
            second = self._seconds[index] = _Second()
        cluster = cluster or NO_UPSTREAM
        for s in (second, self.total):
            s.requests += 1
            s.sketch.add(max(latency_ms, 0.0))
            s.max_ms = max(s.max_ms, latency_ms)
            s.clusters[cluster] += 1
            if failed:
                s.failures += 1
                s.cluster_failures[cluster] += 1
            if group is not None:
                s.groups[(group, label or cluster)] += 1
                if failed:
                    s.group_failures[group] += 1

    def group_counts(self, group: str) -> Counter[str]:
        """Requests of ``group`` by label over the whole run."""
        return Counter({lab: n for (g, lab), n in self.total.groups.items() if g == group})

    def group_failures(self, group: str) -> int:
        return self.total.group_failures[group]

    def failures_since(self, t: float) -> tuple[int, int]:
        """(requests, failures) that started at or after ``t`` seconds (whole seconds)."""
        first = math.ceil(t)
        picked = [s for i, s in self._seconds.items() if i >= first]
        return sum(s.requests for s in picked), sum(s.failures for s in picked)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready row per second from 0 to the last second with a request."""
        last = max(self._seconds, default=-1)
        return [_row(i, self._seconds.get(i) or _Second()) for i in range(last + 1)]

    def row(self, index: int) -> dict[str, Any]:
        """Second ``index`` alone (cheap: the progress line reads one a second)."""
        return _row(index, self._seconds.get(index) or _Second())

    def totals(self) -> dict[str, Any]:
        return _row(None, self.total)


def _quantiles(sketch: DDSketch) -> dict[str, float | None]:
    if sketch.count == 0:
        return {f"p{round(q * 100)}": None for q in QUANTILES}
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        value = sketch.get_quantile_value(q)
        out[f"p{round(q * 100)}"] = None if value is None else round(value, 3)
    return out


def _row(index: int | None, s: _Second) -> dict[str, Any]:
    groups: dict[str, dict[str, int]] = {}
    for (group, label), n in sorted(s.groups.items()):
        groups.setdefault(group, {})[label] = n
    row: dict[str, Any] = {} if index is None else {"t": index}
    row.update(
        requests=s.requests,
        failures=s.failures,
        latency_ms=_quantiles(s.sketch),
        clusters=dict(sorted(s.clusters.items())),
        cluster_failures=dict(sorted(s.cluster_failures.items())),
        groups=groups,
        group_failures=dict(sorted(s.group_failures.items())),
    )
    if index is None and s.sketch.count:
        row["latency_ms"]["avg"] = round(s.sketch.sum / s.sketch.count, 3)
        row["latency_ms"]["max"] = round(s.max_ms, 3)
    return row


def merge_counts(items: Iterable[Mapping[str, int]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for item in items:
        out.update(item)
    return out
