"""Typed models of the YAML users keep in Consul KV (SPEC.md section 1).

The models accept the seed format exactly: kebab-case keys, unknown keys rejected. They are
frozen; :mod:`junction.config.load` turns pydantic's errors into path-named problems.
Derived views that translation needs (virtual hosts, weighted prefix routes, the cluster
set) are computed here once, so translation stays a plain walk.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from junction.config.base import CLUSTER_NAME, Model, Number, Seconds, check_names, int_in
from junction.config.decisions import DecisionSettings, ExperimentsSection, VersionsSection

__all__ = [
    "CLUSTER_NAME",
    "ClusterSection",
    "Config",
    "EdsEndpoint",
    "EgressListen",
    "EgressSection",
    "EndpointSection",
    "HealthCheck",
    "IpAddress",
    "Listen",
    "ListenerConfig",
    "LoadBalancer",
    "OutlierDetection",
    "PrefixRoute",
    "RouteBlock",
    "RouteCluster",
    "SlowStart",
    "Timeouts",
    "VirtualHost",
    "group_by_prefix",
]

# The shared pieces live in junction.config.base; these are the names this module's
# models were written with.
_Model = Model
_int_in = int_in
_check_names = check_names


def _ip_address(value: Any) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise PydanticCustomError("junction", "must be an IP address") from None
    return str(value)


Port = Annotated[int, _int_in(1, 65535)]
#: An IPv4 or IPv6 address (Envoy's socket addresses and EDS endpoints take no names).
IpAddress = Annotated[str, AfterValidator(_ip_address)]
Weight = Annotated[int, _int_in(0, 100)]
Threshold = Annotated[int, _int_in(1, 1000)]


# ---- listener ------------------------------------------------------------------------


class Listen(_Model):
    protocol: Literal["tcp"] = "tcp"
    address: IpAddress = "0.0.0.0"
    port: Port


class Timeouts(_Model):
    """Seconds. ``connect``: every upstream cluster's connect timeout; ``idle``: the HTTP
    connection manager's connection idle timeout; ``request``: each route's timeout."""

    connect: Seconds | None = None
    idle: Seconds | None = None
    request: Seconds | None = None


class ListenerConfig(_Model):
    listen: Listen
    timeout: Timeouts = Timeouts()


# ---- routes --------------------------------------------------------------------------


class RouteCluster(_Model):
    prefix: tuple[str, ...] = Field(min_length=1)
    weight: Weight = 100

    @field_validator("prefix")
    @classmethod
    def _prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for p in value:
            if not p.startswith("/"):
                raise PydanticCustomError("junction", f"prefix {p!r} must start with '/'")
        if len(set(value)) != len(value):
            raise PydanticCustomError("junction", "lists the same prefix twice")
        return value


class RouteBlock(_Model):
    """One ``route:`` block: a set of domains (one Envoy virtual host) and its clusters."""

    domain: tuple[str, ...] = Field(min_length=1)
    host_header: str | None = None
    cluster: dict[str, RouteCluster] = Field(min_length=1)

    @field_validator("domain")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for d in value:
            if not d or any(c.isspace() for c in d):
                raise PydanticCustomError("junction", f"domain {d!r} is not a host name")
        if len(set(value)) != len(value):
            raise PydanticCustomError("junction", "lists the same domain twice")
        return value

    @field_validator("cluster")
    @classmethod
    def _cluster_names(cls, value: dict[str, RouteCluster]) -> dict[str, RouteCluster]:
        _check_names(value, "cluster")
        return value


# ---- clusters ------------------------------------------------------------------------


class HealthCheck(_Model):
    """Envoy active health checking, exactly as configured (SPEC.md section 1)."""

    type: Literal["http", "tcp"] = "http"
    host: str | None = None
    value: str = "/"
    expected: tuple[str, ...] = ("200",)
    timeout: Seconds
    interval: Seconds
    healthy: Threshold
    unhealthy: Threshold

    @field_validator("expected", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not value:
            raise PydanticCustomError("junction", "must be a non-empty list of status codes")
        out = []
        for code in value:
            text = str(code) if isinstance(code, int) and not isinstance(code, bool) else code
            if not isinstance(text, str) or not _status_range(text):
                raise PydanticCustomError(
                    "junction",
                    f"{code!r} is not an HTTP status code 100..599 (or a range like '200-299')",
                )
            out.append(text)
        return tuple(out)

    @field_validator("value")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise PydanticCustomError("junction", "must be a path starting with '/'")
        return value

    def status_ranges(self) -> tuple[tuple[int, int], ...]:
        """Expected codes as half-open [start, end) ranges, the form Envoy wants."""
        ranges = []
        for text in self.expected:
            lo, hi = _status_range(text) or (0, 0)
            ranges.append((lo, hi + 1))
        return tuple(ranges)


def _status_range(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"(\d{3})(?:-(\d{3}))?", text.strip())
    if not m:
        return None
    lo = int(m.group(1))
    hi = int(m.group(2) or lo)
    if not 100 <= lo <= hi <= 599:
        return None
    return lo, hi


LbPolicy = Literal["round-robin", "least-request", "random", "ring-hash", "maglev"]
#: The policies Envoy can warm new hosts up with (``slow_start_config``).
SLOW_START_POLICIES = ("round-robin", "least-request")


_factor = Number(0, 100, "must be a number 0 < x <= 100 (Envoy's 1.9)", above_lo=True)
_aggression = Number(0, 100, "must be a number 0 < x <= 100 (1.0: linear)", above_lo=True)


Percent100 = Annotated[int, _int_in(0, 100)]


class OutlierDetection(_Model):
    """Envoy passive health checking (``Cluster.outlier_detection``); every key optional,
    an absent key keeps Envoy's default (see :mod:`junction.xds.translate_lb`)."""

    consecutive_5xx: Annotated[int, _int_in(1, 1000)] | None = None
    consecutive_gateway_failure: Annotated[int, _int_in(1, 1000)] | None = None
    interval: Seconds | None = None
    base_ejection_time: Seconds | None = None
    max_ejection_time: Seconds | None = None
    max_ejection_percent: Percent100 | None = None
    success_rate_minimum_hosts: Annotated[int, _int_in(1, 10_000)] | None = None
    success_rate_request_volume: Annotated[int, _int_in(1, 1_000_000)] | None = None
    #: Ejected below mean - factor * stdev of the hosts' success rates (Envoy: 1.9).
    success_rate_stdev_factor: Annotated[float, BeforeValidator(_factor)] | None = None
    #: Percent of success-rate outliers actually ejected (Envoy: 100; 0 turns it off).
    enforcing_success_rate: Percent100 | None = None


class SlowStart(_Model):
    """Warm-up of new hosts (``slow_start_config`` of round-robin and least-request)."""

    window: Seconds
    aggression: Annotated[float, BeforeValidator(_aggression)] | None = None


class LoadBalancer(_Model):
    lb_policy: LbPolicy = "round-robin"
    discovery: Literal["eds"] = "eds"
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    slow_start: SlowStart | None = None

    @model_validator(mode="after")
    def _slow_start_policy(self) -> LoadBalancer:
        if self.slow_start is not None and self.lb_policy not in SLOW_START_POLICIES:
            # Envoy has slow start only for these two (RoundRobinLbConfig and
            # LeastRequestLbConfig); on the others it would silently do nothing.
            raise PydanticCustomError(
                "junction",
                f"slow-start works with lb-policy round-robin or least-request, "
                f"not {self.lb_policy}",
            )
        return self


class ClusterSection(_Model):
    loadbalancer: dict[str, LoadBalancer] = {}

    @field_validator("loadbalancer")
    @classmethod
    def _names(cls, value: dict[str, LoadBalancer]) -> dict[str, LoadBalancer]:
        _check_names(value, "cluster")
        return value


class EdsEndpoint(_Model):
    protocol: Literal["tcp"] = "tcp"
    port: Port | None = None
    balancing_policy: Literal["locality", "none"] = "none"


class EndpointSection(_Model):
    eds: dict[str, EdsEndpoint] = {}


# ---- egress --------------------------------------------------------------------------


class EgressListen(_Model):
    """Where the application sends its outbound calls. Loopback by default: a header on
    this listener chooses versions, so it must not be reachable from outside."""

    protocol: Literal["tcp"] = "tcp"
    address: IpAddress = "127.0.0.1"
    port: Port


class EgressSection(_Model):
    """A second listener for outbound calls to versioned services (see
    :mod:`junction.xds.translate_egress`); ``services`` are names under ``versions``."""

    listen: EgressListen
    services: tuple[str, ...] = Field(min_length=1)

    @field_validator("services")
    @classmethod
    def _services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _check_names(dict.fromkeys(value), "service")
        if len(set(value)) != len(value):
            raise PydanticCustomError("junction", "lists the same service twice")
        return value


# ---- the document --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixRoute:
    """One Envoy route: a prefix and the clusters that share it, with relative weights."""

    prefix: str
    clusters: tuple[tuple[str, int], ...]  # (cluster, weight), sorted by cluster name


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    host_rewrite: str | None
    routes: tuple[PrefixRoute, ...]  # longest prefix first


class Config(_Model):
    """A whole Junction document. Later features add top-level sections here."""

    listener: ListenerConfig
    # The seed has one mapping; a list of them serves several domain sets (QA environments).
    route: Annotated[
        Annotated[RouteBlock, Tag("RouteBlock")]
        | Annotated[list[RouteBlock], Tag("list[RouteBlock]")],
        Discriminator(lambda v: "list[RouteBlock]" if isinstance(v, list) else "RouteBlock"),
    ]
    cluster: ClusterSection = ClusterSection()
    endpoint: EndpointSection = EndpointSection()
    # The decision service's sections (junction.config.decisions).
    versions: VersionsSection = {}
    experiments: ExperimentsSection = {}
    decision: DecisionSettings = Field(default_factory=DecisionSettings)
    # Versioned routing of the application's outbound calls (its own listener).
    egress: EgressSection | None = None

    @field_validator("route", mode="before")
    @classmethod
    def _route_shape(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("junction", "must have at least one route block")
        if not isinstance(value, dict | list):
            raise PydanticCustomError(
                "junction", "must be a mapping (one virtual host) or a list of them"
            )
        return value

    # -- derived views (pure, cheap; translation calls them) --

    def route_blocks(self) -> tuple[RouteBlock, ...]:
        return tuple(self.route) if isinstance(self.route, list) else (self.route,)

    def cluster_names(self) -> tuple[str, ...]:
        """Every cluster: those routes name and those with a load-balancer entry, sorted."""
        names = set(self.cluster.loadbalancer)
        for block in self.route_blocks():
            names.update(block.cluster)
        return tuple(sorted(names))

    def load_balancer(self, cluster: str) -> LoadBalancer:
        return self.cluster.loadbalancer.get(cluster) or LoadBalancer()

    def eds(self, cluster: str) -> EdsEndpoint:
        return self.endpoint.eds.get(cluster) or EdsEndpoint()

    def virtual_hosts(self) -> tuple[VirtualHost, ...]:
        hosts = []
        for block in self.route_blocks():
            groups = group_by_prefix(block)
            routes = tuple(
                PrefixRoute(prefix, tuple(sorted(members)))
                for prefix, members in sorted(groups.items(), key=lambda kv: (-len(kv[0]), kv[0]))
            )
            hosts.append(VirtualHost(block.domain[0], block.domain, block.host_header, routes))
        return tuple(hosts)


def group_by_prefix(block: RouteBlock) -> dict[str, list[tuple[str, int]]]:
    groups: dict[str, list[tuple[str, int]]] = {}
    for cluster, rc in block.cluster.items():
        for prefix in rc.prefix:
            groups.setdefault(prefix, []).append((cluster, rc.weight))
    return groups
