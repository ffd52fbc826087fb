"""The decision sections of a Junction document: ``versions``, ``experiments``, ``decision``.

They configure :mod:`junction.extproc`, the per-request decision service, and the Envoy
wiring translation adds for it (the ext_proc filter, one header-matched route per version
cluster). Same rules as the rest of the document: kebab-case keys, unknown keys rejected,
every problem named by its YAML path::

    versions:
      web-api:
        default: perl
        clusters: {perl: web-api-perl, go: web-api-go}
        pin: {header: x-junction-version, trust: any}
        canary: {version: go, weight: 10, key: {header: x-user-id}}
    experiments:
      feed-ranking:
        service: web-api
        match: {prefix: /api/feed, methods: [GET]}
        key: {header: x-user-id}
        sticky-cookie: {name: jx-feed}
        arms: {control: {weight: 50}, treatment: {weight: 50, version: go}}
    decision: {transport: http, failure-mode: open, timeout: 0.2}

Checks that need more than one section (a version cluster must be routed to, an arm's
version must exist...) are in :func:`cross_check_decisions`, which
:func:`junction.config.load.cross_check` calls.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from junction.config.model import CLUSTER_NAME, Seconds, _check_names, _int_in, _Model

if TYPE_CHECKING:
    from junction.config.model import Config

__all__ = [
    "BUCKETS",
    "CLUSTER_HEADER",
    "Arm",
    "Canary",
    "CanaryRamp",
    "DecisionSettings",
    "Experiment",
    "ExperimentMatch",
    "ExperimentsSection",
    "KeySource",
    "PinSettings",
    "ServiceVersions",
    "StickyCookie",
    "VersionsSection",
    "cross_check_decisions",
]

#: The request header the decision service sets and Envoy routes on (one header-matched
#: route per version cluster). Clients must never set it: Envoy strips it before routing.
CLUSTER_HEADER = "x-junction-cluster"

#: Weights are percentages with two decimals: 10000 buckets of 0.01 %.
BUCKETS = 10_000

#: RFC 9110 token, lowercase (HTTP/2 and Envoy carry header names in lowercase).
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]{1,100}$")
#: RFC 6265 cookie-name (a token), as written; cookie names are case-sensitive.
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
#: Query parameter names we look for as-is (no percent-decoding needed).
_QUERY_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,100}$")
#: Version and arm names end up in headers and in ``name=value`` decision tags.
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _header_name(value: Any) -> Any:
    if isinstance(value, str) and not _HEADER_NAME.match(value):
        raise PydanticCustomError(
            "junction", f"{value!r} is not a lowercase HTTP header name (letters, digits, '-')"
        )
    return value


def _cookie_name(value: Any) -> Any:
    if isinstance(value, str) and not _COOKIE_NAME.match(value):
        raise PydanticCustomError("junction", f"{value!r} is not a cookie name (an HTTP token)")
    return value


def _label(value: Any) -> Any:
    if isinstance(value, str) and not _LABEL.match(value):
        raise PydanticCustomError(
            "junction",
            f"{value!r} must be letters, digits, '_' or '-' (at most 64, starting with a "
            "letter or digit)",
        )
    return value


def _percent(value: Any) -> float:
    """A weight in percent, 0..100 with at most two decimals (one bucket is 0.01 %)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 100
        or abs(value * 100 - round(value * 100)) > 1e-6
    ):
        raise PydanticCustomError(
            "junction", "must be a percentage 0..100 with at most two decimals"
        )
    return float(value)


HeaderName = Annotated[str, BeforeValidator(_header_name)]
CookieName = Annotated[str, BeforeValidator(_cookie_name)]
Label = Annotated[str, BeforeValidator(_label)]
Percent = Annotated[float, BeforeValidator(_percent)]


def _labels(names: dict[str, Any], what: str) -> None:
    for name in names:
        if not _LABEL.match(name):
            raise PydanticCustomError(
                "junction", f"{what} name {name!r} must be letters, digits, '_' or '-'"
            )


# ---- pins ----------------------------------------------------------------------------


class PinSettings(_Model):
    """Where a request may name a version, and when that is believed.

    ``trust``: ``any`` believes every pin; ``cidr`` only pins from a downstream address in
    ``trusted-cidrs``; ``hmac`` only pins signed with the key in the environment variable
    ``hmac-key-env`` (never in the document: documents live in Consul KV).
    """

    header: HeaderName | None = "x-junction-version"
    cookie: CookieName | None = None
    query: str | None = None
    trust: Literal["any", "cidr", "hmac"]
    trusted_cidrs: tuple[str, ...] = ()
    hmac_key_env: str | None = None
    when_unavailable: Literal["default", "reject"] = "default"
    #: Header set upstream with the chosen version ("" = off), for the application to
    #: forward on its own calls.
    propagate: str = "x-junction-version"

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is not None and not _QUERY_NAME.match(value):
            raise PydanticCustomError("junction", f"{value!r} is not a plain query parameter name")
        return value

    @field_validator("propagate")
    @classmethod
    def _propagate(cls, value: str) -> str:
        return value if value == "" else _header_name(value)

    @field_validator("trusted_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            try:
                ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise PydanticCustomError(
                    "junction", f"{text!r} is not a network like 10.0.0.0/8 ({exc})"
                ) from None
        return value

    @field_validator("hmac_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise PydanticCustomError("junction", f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _trust(self) -> PinSettings:
        if self.header is None and self.cookie is None and self.query is None:
            raise PydanticCustomError("junction", "names no header, cookie or query parameter")
        if self.trust == "cidr" and not self.trusted_cidrs:
            raise PydanticCustomError("junction", "trust: cidr needs trusted-cidrs")
        if self.trust != "cidr" and self.trusted_cidrs:
            raise PydanticCustomError("junction", "trusted-cidrs is only used with trust: cidr")
        if self.trust == "hmac" and not self.hmac_key_env:
            raise PydanticCustomError(
                "junction", "trust: hmac needs hmac-key-env (the key is read from there)"
            )
        if self.trust != "hmac" and self.hmac_key_env:
            raise PydanticCustomError("junction", "hmac-key-env is only used with trust: hmac")
        return self


# ---- assignment keys, canary, experiments --------------------------------------------


def _key_source(value: Any) -> Any:
    # `key: random` reads better than `key: {}`; both mean "no key: per-request random".
    return {} if value == "random" else value


class KeySource(_Model):
    """Where a stable assignment key comes from: a header, else a cookie. Neither set, or
    ``key: random``: no key, so assignment is per-request random."""

    header: HeaderName | None = None
    cookie: CookieName | None = None


Key = Annotated[KeySource, BeforeValidator(_key_source)]


def _step(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise PydanticCustomError(
            "junction", "must be a whole percentage 1..100 (route weights are whole percents)"
        )
    return value


def _fraction(value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise PydanticCustomError("junction", "must be a fraction 0..1 (0.05 is 5 %)")
    return float(value)


def _milliseconds(value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 3_600_000
    ):
        raise PydanticCustomError("junction", "must be a number of milliseconds 0..3600000")
    return float(value)


def _ratio(value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 1 <= value <= 100
    ):
        raise PydanticCustomError("junction", "must be a ratio 1..100 (1.5: 50 % slower)")
    return float(value)


Fraction = Annotated[float, BeforeValidator(_fraction)]
Milliseconds = Annotated[float, BeforeValidator(_milliseconds)]


#: Ramp keys that no longer mean anything, and what replaced them (named in the error).
_REMOVED_RAMP_KEYS = {
    "max-error-increase": (
        "errors are judged by an anytime-valid test of the candidate against the baseline;"
        " set alpha (its false-rollback rate for the whole ramp) and margin instead"
    ),
    "max-p99": (
        "latency is judged by counting requests slower than latency-thresholds (ms) or the"
        " baseline's latency-quantiles, with the same sequential test as errors"
    ),
    "max-p99-ratio": (
        "latency is judged by counting requests slower than the baseline's"
        " latency-quantiles (or fixed latency-thresholds) with an anytime-valid test"
    ),
    "p99-slack": (
        "no slack is needed any more: the latency test keeps alpha however often it looks;"
        " tune latency-quantiles or latency-thresholds instead"
    ),
}


def _quantile(value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value < 1
    ):
        raise PydanticCustomError("junction", "must be a quantile between 0 and 1 (0.99: p99)")
    return float(value)


def _alpha(value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 0.5
    ):
        raise PydanticCustomError(
            "junction", "must be a probability in (0, 0.5] (0.05: 5 % of good candidates)"
        )
    return float(value)


def _margin(value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 1 < value <= 100
    ):
        raise PydanticCustomError("junction", "must be a ratio above 1 (1.5: 50 % worse)")
    return float(value)


class CanaryRamp(_Model):
    """The automatic ramp of a canary, driven by access-log outcomes (:mod:`junction.canary`).

    The candidate starts at the first step. Anytime-valid tests (README "How canary
    decisions are made") compare it with the baseline after every tick of access logs:

    - ``alpha``: of ramps of a candidate as good as its baseline, at most this share is rolled
      back, however often the controller looks (the whole ramp, every step together);
    - rollback: on errors (5xx, resets), on requests slower than each latency threshold, and
      the guardrail ``max-error-rate`` (an error rate no candidate may have, judged on a
      time-uniform confidence bound, never on a raw ratio of few requests);
    - latency thresholds, fixed when a step starts: ``latency-thresholds`` (ms), or else the
      baseline's ``latency-quantiles`` over the ``latency-lookback`` seconds before the step
      (``latency-quantiles: []`` and no thresholds: no latency test);
    - promotion: after ``interval`` seconds at a step with ``min-requests`` on both sides, no
      regression evidence, a split that matches the weights (within
      ``sample-ratio-tolerance`` times the configured odds) and no more lost log entries than
      ``max-missing``; earlier if the candidate is proven no worse than ``margin`` times the
      baseline on every metric (a non-inferiority test at ``alpha``).
    """

    steps: tuple[Annotated[int, BeforeValidator(_step)], ...] = (1, 5, 10, 25, 50, 100)
    interval: Seconds = 60.0
    min_requests: Annotated[int, _int_in(1, 10_000_000)] = 100
    alpha: Annotated[float, BeforeValidator(_alpha)] = 0.05
    margin: Annotated[float, BeforeValidator(_margin)] = 1.5
    max_error_rate: Fraction = 0.5
    latency_quantiles: tuple[Annotated[float, BeforeValidator(_quantile)], ...] = (0.5, 0.9, 0.99)
    latency_thresholds: tuple[Milliseconds, ...] | None = None
    latency_lookback: Seconds = 120.0
    sample_ratio_tolerance: Annotated[float, BeforeValidator(_margin)] = 1.5
    max_missing: Fraction = 0.0

    @field_validator("max_error_rate")
    @classmethod
    def _guardrail(cls, value: float) -> float:
        if not 0 < value < 1:
            raise PydanticCustomError(
                "junction", "must be above 0 and below 1 (0.5: no candidate may fail half)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, replaced in _REMOVED_RAMP_KEYS.items():
                if key in data:
                    raise PydanticCustomError("junction", f"{key} was removed: {replaced}")
        return data

    @model_validator(mode="after")
    def _latency(self) -> CanaryRamp:
        if self.latency_thresholds is not None and "latency_quantiles" in self.model_fields_set:
            raise PydanticCustomError(
                "junction", "set latency-thresholds or latency-quantiles, not both"
            )
        for name in ("latency_thresholds", "latency_quantiles"):
            values = getattr(self, name) or ()
            if list(values) != sorted(set(values)):
                key = name.replace("_", "-")
                raise PydanticCustomError("junction", f"{key} must increase")
        if self.latency_thresholds is not None and not 0 < len(self.latency_thresholds) <= 5:
            raise PydanticCustomError("junction", "latency-thresholds: list 1 to 5 values")
        if len(self.latency_quantiles) > 5:
            raise PydanticCustomError("junction", "latency-quantiles: list at most 5 values")
        return self

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise PydanticCustomError("junction", "must list at least one step")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise PydanticCustomError("junction", "must increase step by step")
        if value[-1] != 100:
            raise PydanticCustomError("junction", "must end at 100 (the promotion)")
        return value


class Canary(_Model):
    """The candidate version's share of unpinned, unassigned requests, in percent.

    With a key, the request's bucket (a hash of the key) decides: buckets [0, weight) go to
    the candidate, so raising the weight only adds users and nobody bounces back.
    ``ramp``: move the weight automatically (:class:`CanaryRamp`); without it, ``weight``
    stays as written.
    """

    version: Label
    weight: Percent
    key: Key = KeySource()
    ramp: CanaryRamp | None = None


class ServiceVersions(_Model):
    """A service's versions: version name -> cluster, the default, pinning and canary."""

    default: Label
    clusters: dict[str, str] = Field(min_length=1)
    pin: PinSettings | None = None
    canary: Canary | None = None

    @field_validator("clusters")
    @classmethod
    def _clusters(cls, value: dict[str, str]) -> dict[str, str]:
        _labels(value, "version")
        for cluster in value.values():
            if not isinstance(cluster, str) or not CLUSTER_NAME.match(cluster):
                raise PydanticCustomError("junction", f"{cluster!r} is not a cluster name")
        if len(set(value.values())) != len(value):
            raise PydanticCustomError("junction", "maps two versions to the same cluster")
        return value

    @model_validator(mode="after")
    def _versions(self) -> ServiceVersions:
        if self.default not in self.clusters:
            raise PydanticCustomError(
                "junction", f"default {self.default!r} is not one of clusters' versions"
            )
        if self.canary is not None:
            if self.canary.version not in self.clusters:
                raise PydanticCustomError(
                    "junction", f"canary version {self.canary.version!r} is not in clusters"
                )
            if self.canary.version == self.default:
                raise PydanticCustomError("junction", "the canary version is the default")
        return self


class ExperimentMatch(_Model):
    """Which requests an experiment sees: a path prefix, methods, exact header values."""

    prefix: str = "/"
    methods: tuple[str, ...] = ()
    headers: dict[str, str] = {}

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise PydanticCustomError("junction", f"prefix {value!r} must start with '/'")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for m in value:
            if not re.fullmatch(r"[A-Z]{1,20}", m):
                raise PydanticCustomError("junction", f"{m!r} is not an HTTP method like GET")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            _header_name(name)
        return value


class StickyCookie(_Model):
    """A cookie that keeps a generated key, for requests that bring none."""

    name: CookieName
    max_age: Annotated[int, _int_in(1, 400 * 86400)] = 30 * 86400


class Arm(_Model):
    """One arm: its share of the experiment's buckets (percent) and, optionally, the version
    that serves it. An arm without a version only tags the request."""

    weight: Percent
    version: Label | None = None


class Experiment(_Model):
    """A per-request experiment. Arms take consecutive bucket ranges in document order, so
    adding an arm at the end (from unassigned buckets) moves no one already assigned."""

    service: str | None = None
    match: ExperimentMatch = ExperimentMatch()
    key: Key = KeySource()
    #: Hashed with the key; defaults to the experiment's name. Change it to re-shuffle.
    salt: str | None = Field(default=None, min_length=1, max_length=200)
    sticky_cookie: StickyCookie | None = None
    arms: dict[str, Arm] = Field(min_length=1)

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: dict[str, Arm]) -> dict[str, Arm]:
        _labels(value, "arm")
        total = sum(round(a.weight * 100) for a in value.values())
        if total > BUCKETS:
            raise PydanticCustomError(
                "junction", f"arm weights sum to {total / 100:g}%, more than 100%"
            )
        return value


# ---- the service ---------------------------------------------------------------------


class DecisionSettings(_Model):
    """How Envoy talks to the decision service.

    ``transport``: ``http`` (Envoy's ext_proc ``http_service``, the faster) or ``grpc``.
    ``header``: the decision tag set upstream ("" = off). ``failure-mode``: ``open`` lets
    requests through on the plain routes when the service fails; ``closed`` answers them
    with an error. ``timeout``: ext_proc's per-message timeout, seconds.
    """

    transport: Literal["http", "grpc"] = "http"
    header: str = "x-junction-decision"
    failure_mode: Literal["open", "closed"] = "open"
    timeout: Seconds = 0.2

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        return value if value == "" else _header_name(value)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value > 10:
            raise PydanticCustomError("junction", "must be at most 10 seconds")
        return value


def _names(what: str) -> Any:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        _check_names(value, what)
        return value

    return AfterValidator(check)


#: The top-level sections as :class:`~junction.config.model.Config` declares them.
VersionsSection = Annotated[dict[str, ServiceVersions], _names("service")]
ExperimentsSection = Annotated[dict[str, Experiment], _names("experiment")]


# ---- checks across sections ----------------------------------------------------------

Path = tuple[str | int, ...]


def cross_check_decisions(config: Config) -> list[tuple[Path, str]]:
    """Problems that need the routes and the decision sections together, as (path, message)."""
    return list(_cross(config))


def _cross(config: Config) -> Iterator[tuple[Path, str]]:
    routed: set[str] = set()
    for block in config.route_blocks():
        routed.update(block.cluster)
    owner: dict[str, str] = {}
    for service, sv in config.versions.items():
        for version, cluster in sv.clusters.items():
            path: Path = ("versions", service, "clusters", version)
            if cluster not in routed:
                yield path, f"cluster {cluster!r} is not routed to by any route"
            elif cluster in owner:
                yield path, f"cluster {cluster!r} is already a version of {owner[cluster]!r}"
            else:
                owner[cluster] = service
        if sv.pin is not None:
            yield from _pin_headers(("versions", service, "pin"), sv.pin, config)
        if sv.canary is not None and sv.canary.key.header == CLUSTER_HEADER:
            yield ("versions", service, "canary", "key", "header"), _RESERVED
    for vh_index, block in enumerate(config.route_blocks()):
        for prefix, services in _services_by_prefix(block.cluster, owner).items():
            if len(services) > 1:
                where: Path = ("route", vh_index) if isinstance(config.route, list) else ("route",)
                yield (
                    (*where, "cluster"),
                    f"prefix {prefix!r} mixes clusters of versioned services "
                    + " and ".join(repr(s) for s in sorted(services)),
                )
    for name, exp in config.experiments.items():
        base: Path = ("experiments", name)
        versioned = [a for a, arm in exp.arms.items() if arm.version is not None]
        if exp.service is None:
            for arm in versioned:
                yield (*base, "arms", arm, "version"), "needs the experiment's service"
        elif exp.service not in config.versions:
            yield (*base, "service"), f"{exp.service!r} is not a service under versions"
        else:
            known = config.versions[exp.service].clusters
            for arm in versioned:
                named = exp.arms[arm].version
                if named not in known:
                    yield (
                        (*base, "arms", arm, "version"),
                        f"{named!r} is not a version of {exp.service!r}",
                    )
        if exp.key.header == CLUSTER_HEADER:
            yield (*base, "key", "header"), _RESERVED
        for header in exp.match.headers:
            if header == CLUSTER_HEADER:
                yield (*base, "match", "headers", header), _RESERVED
    decision_header = config.decision.header
    if decision_header == CLUSTER_HEADER:
        yield ("decision", "header"), _RESERVED


_RESERVED = f"{CLUSTER_HEADER} is reserved: it carries the decision to Envoy's routes"


def _pin_headers(base: Path, pin: PinSettings, config: Config) -> Iterator[tuple[Path, str]]:
    if pin.header == CLUSTER_HEADER:
        yield (*base, "header"), _RESERVED
    if pin.propagate == CLUSTER_HEADER:
        yield (*base, "propagate"), _RESERVED
    if config.decision.header and config.decision.header in (pin.header, pin.propagate):
        yield (
            ("decision", "header"),
            f"{config.decision.header!r} is also a pin header of {base[1]!r}",
        )


def _services_by_prefix(clusters: dict[str, Any], owner: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cluster, rc in clusters.items():
        for prefix in rc.prefix:
            if cluster in owner:
                out.setdefault(prefix, set()).add(owner[cluster])
    return out
