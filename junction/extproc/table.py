"""The decision core: a table compiled once per (config, health), and a pure function from a
request's headers to a :class:`Decision`.

Nothing here does I/O, logs, or knows a wire format; the HTTP and gRPC adapters feed it
headers and turn decisions into Envoy's ``ProcessingResponse``. Everything that can be
worked out per config version is: virtual-host and prefix matching tables, per-version
decisions with their header mutations (so adapters can cache their serialized form per
:class:`Decision` object), hash states pre-seeded with each salt.

Order of precedence for a request on a planned route (:mod:`junction.extproc.plan`):

1. a **pin** (header, then cookie, then query parameter), if trusted and naming a known
   version: that version while it has a healthy host; else the default version or a
   local 503, as ``when-unavailable`` says;
2. the first matching **experiment** that puts the request's key into one of its arms;
   an arm with a version decides the cluster, an arm without one only tags;
3. the service's **canary**: bucket < weight goes to the candidate, else the default;
4. otherwise Envoy's own plain route picks (the YAML weights, or the canary's hash split),
   as when the service is down and the filter fails open.

Experiment keys and buckets are in :mod:`junction.extproc.keys`; canary buckets use Envoy's
own hash (:mod:`junction.extproc.envoy_hash`).
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from junction.config.decisions import BUCKETS, CLUSTER_HEADER, Experiment
from junction.config.model import Config
from junction.extproc.counters import Counters
from junction.extproc.envoy_hash import CanaryKey
from junction.extproc.hosts import HostMatcher
from junction.extproc.keys import Hasher, Headers, KeyReader, Request, valid_sticky
from junction.extproc.pins import AMBIGUOUS, PinCheck, query_param, verify_pin
from junction.extproc.plan import route_plans, wanted_headers
from junction.extproc.prefixes import PrefixIndex

__all__ = ["MAX_PIN", "NO_DECISION", "Decision", "DecisionKind", "DecisionTable"]

#: Longest pin value considered (longer: refused, counted).
MAX_PIN = 256


class DecisionKind(enum.Enum):
    """What decided: typed, so nothing has to read it back out of the tag."""

    #: Nothing to decide on this route: Envoy continues unchanged.
    NONE = "none"
    #: A trusted pin to a version with a healthy host.
    PIN = "pin"
    #: A pin to a version without a healthy host, sent to the default instead.
    PIN_FALLBACK = "pin-fallback"
    #: A pin to a version without a healthy host, answered locally (503).
    PIN_REJECTED = "pin-rejected"
    #: An experiment's arm (with a version, or only a tag).
    EXPERIMENT = "experiment"
    #: The service's canary bucket (candidate or default).
    CANARY = "canary"
    #: Envoy's own weighted route picks.
    ROUTE = "route"


@dataclass(frozen=True, slots=True, eq=False)
class Decision:
    """What Envoy is told for one request. Identity-hashed: adapters cache the serialized
    form of the decisions a table compiled, keyed by the object."""

    #: The decision tag (``pin=go``, ``exp=feed:treatment``, ``canary=go``, ``route``).
    tag: str
    #: Request headers to set (overwriting), in order.
    set_headers: tuple[tuple[str, str], ...] = ()
    #: Request headers to remove.
    remove_headers: tuple[str, ...] = ()
    #: Whether Envoy must re-pick the route (the cluster header changed).
    clear_route: bool = False
    #: Non-zero: answer the request locally with this status (and ``body``).
    status: int = 0
    body: str = ""
    #: A ``Set-Cookie`` value for the response (a freshly issued sticky key), else None.
    set_cookie: str | None = None
    #: What decided (the tag says it to people, this to code).
    kind: DecisionKind = DecisionKind.NONE


#: For requests on routes with nothing to decide: Envoy continues unchanged.
NO_DECISION = Decision(tag="")


class _Service:
    """One versioned service, compiled."""

    def __init__(
        self,
        name: str,
        config: Config,
        unavailable: frozenset[str],
        env: Mapping[str, str],
    ) -> None:
        sv = config.versions[name]
        self.name = name
        self.decision_header = config.decision.header
        self.propagate = sv.pin.propagate if sv.pin is not None else ""
        self.clusters = {v.encode(): c for v, c in sv.clusters.items()}
        self.default = sv.default
        self._decisions: dict[tuple[str, str | None], Decision] = {}
        # -- pins
        pin = sv.pin
        self.pin_header = pin.header if pin else None
        self.pin_cookie = pin.cookie.encode() if pin and pin.cookie else None
        self.pin_query = pin.query.encode() if pin and pin.query else None
        self.trust = pin.trust if pin else "any"
        self.networks = tuple(ipaddress.ip_network(n) for n in pin.trusted_cidrs) if pin else ()
        self.trusted_sources: dict[str, bool] = {}
        key_env = pin.hmac_key_env if pin else None
        #: None with trust: hmac means the key is missing: every pin is refused.
        self.hmac_key = env[key_env].encode() if key_env and env.get(key_env) else None
        self.pins: dict[bytes, Decision] = {}
        for version, cluster in sv.clusters.items():
            tag = f"pin={version}"
            if cluster not in unavailable:
                self.pins[version.encode()] = self.decision(tag, version, DecisionKind.PIN)
            elif pin is not None and pin.when_unavailable == "reject":
                self.pins[version.encode()] = Decision(
                    tag=f"{tag},rejected",
                    status=503,
                    body=f"version {version} of {name} has no healthy host\n",
                    kind=DecisionKind.PIN_REJECTED,
                )
            else:
                self.pins[version.encode()] = self.decision(
                    f"{tag},fallback={sv.default}", sv.default, DecisionKind.PIN_FALLBACK
                )
        # -- canary
        canary = sv.canary
        self.canary_version = canary.version if canary else None
        self.canary_limit = round(canary.weight * 100) if canary else 0
        # Envoy's own hash (junction.extproc.envoy_hash): the native weighted route and
        # the plain route Envoy falls back to when this service fails open agree with it.
        self.canary_key = CanaryKey(canary.key) if canary else None

    def decision(self, tag: str, version: str | None, kind: DecisionKind) -> Decision:
        """The decision routing to ``version`` (None: Envoy's weights) tagged ``tag``;
        memoized, so each distinct decision is one object per table (a tag names one
        kind)."""
        found = self._decisions.get((tag, version))
        if found is not None:
            return found
        sets: list[tuple[str, str]] = []
        removes: list[str] = []
        if version is not None:
            sets.append((CLUSTER_HEADER, self.clusters[version.encode()]))
        if self.decision_header:
            sets.append((self.decision_header, tag))
        if self.propagate:
            if version is not None:
                sets.append((self.propagate, version))
            else:
                # Nothing chosen: do not let a client's (untrusted) value flow upstream.
                removes.append(self.propagate)
        made = Decision(
            tag, tuple(sets), tuple(removes), clear_route=version is not None, kind=kind
        )
        self._decisions[(tag, version)] = made
        return made

    # -- per request

    def pinned(self, req: Request, path: bytes, source: str | None) -> Decision | None:
        """The pin decision, or None when the request carries no usable pin."""
        raw = self._pin_value(req, path)
        if raw is None:
            return None
        c = req.counters
        if raw is AMBIGUOUS:
            c.pin_ambiguous += 1
            return None
        if len(raw) > MAX_PIN:
            c.pin_unknown_version += 1
            return None
        if self.trust == "cidr":
            if not self._trusted_source(source):
                c.pin_untrusted += 1
                return None
        elif self.trust == "hmac":
            if self.hmac_key is None:
                c.pin_untrusted += 1
                return None
            version, problem = verify_pin(self.hmac_key, raw, time.time())
            if version is None:
                if problem == PinCheck.EXPIRED:
                    c.pin_expired += 1
                else:
                    c.pin_bad_signature += 1
                return None
            raw = version
        decision = self.pins.get(raw)
        if decision is None:
            c.pin_unknown_version += 1
            return None
        if decision.kind is DecisionKind.PIN_REJECTED:
            c.pin_rejected += 1
        elif decision.kind is DecisionKind.PIN_FALLBACK:
            c.pin_fallback_default += 1
        else:
            c.decided_pin += 1
        return decision

    def _pin_value(self, req: Request, path: bytes) -> bytes | None:
        if self.pin_header is not None:
            values = req.headers.get(self.pin_header)
            if values:
                return values[0] if len(values) == 1 else AMBIGUOUS
        if self.pin_cookie is not None:
            value = req.cookies().get(self.pin_cookie)
            if value is not None:
                return value
        if self.pin_query is not None:
            return query_param(path, self.pin_query)
        return None

    def _trusted_source(self, source: str | None) -> bool:
        if not source:
            return False
        known = self.trusted_sources.get(source)
        if known is not None:
            return known
        host = _source_host(source)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            trusted = False
        else:
            trusted = any(address in net for net in self.networks)
        if len(self.trusted_sources) >= 4096:  # bounded: addresses come from clients
            self.trusted_sources.clear()
        self.trusted_sources[source] = trusted
        return trusted

    def canary(self, req: Request, tag_prefix: str) -> Decision:
        """Candidate or default by bucket; Envoy's weights when there is no canary."""
        if self.canary_version is None or self.canary_key is None:
            return self.decision(tag_prefix + "route", None, DecisionKind.ROUTE)
        n = self.canary_key.bucket(req.headers, req.counters)
        if n is None:
            req.counters.key_random += 1
            n = random.randrange(BUCKETS)
        version = self.canary_version if n < self.canary_limit else self.default
        return self.decision(f"{tag_prefix}canary={version}", version, DecisionKind.CANARY)


class _Experiment:
    """One experiment, compiled."""

    def __init__(self, name: str, exp: Experiment) -> None:
        self.name = name
        self.prefix = exp.match.prefix.encode()
        self.methods = frozenset(m.encode() for m in exp.match.methods)
        self.match_headers = tuple((h, v.encode()) for h, v in exp.match.headers.items())
        self.key = KeyReader(exp.key)
        self.sticky = exp.sticky_cookie
        self.sticky_name = exp.sticky_cookie.name.encode() if exp.sticky_cookie else b""
        self.hasher = Hasher(exp.salt or name)
        self.bounds: list[int] = []
        self.arms: list[tuple[str, str | None]] = []
        end = 0
        for arm_name, arm in exp.arms.items():
            end += round(arm.weight * 100)
            self.bounds.append(end)
            self.arms.append((f"exp={name}:{arm_name}", arm.version))

    def matches(self, req: Request, path: bytes, method: bytes) -> bool:
        if not path.startswith(self.prefix):
            return False
        if self.methods and method not in self.methods:
            return False
        for header, value in self.match_headers:
            values = req.headers.get(header)
            if not values or value not in values:
                return False
        return True

    def assign(self, req: Request) -> tuple[str, str | None, str | None] | None:
        """``(tag, version or None, set-cookie or None)`` of the request's arm, or None when
        its bucket is in no arm."""
        key = self.key.read(req)
        cookie = None
        if key is None and self.sticky is not None:
            key = req.cookies().get(self.sticky_name)
            if key is not None and not valid_sticky(key):
                req.counters.sticky_cookie_invalid += 1
                key = None
            if key is None:
                key = os.urandom(16).hex().encode()
                cookie = (
                    f"{self.sticky.name}={key.decode()}; Max-Age={self.sticky.max_age}; "
                    "Path=/; HttpOnly; SameSite=Lax"
                )
        if key is None:
            req.counters.key_random += 1
            n = random.randrange(BUCKETS)
        else:
            n = self.hasher.bucket(key)
        i = bisect.bisect_right(self.bounds, n)
        if i >= len(self.arms):
            return None
        tag, version = self.arms[i]
        return tag, version, cookie


def _source_host(source: str) -> str:
    """``1.2.3.4:5678`` -> ``1.2.3.4``; ``[::1]:80`` -> ``::1``; a bare address as is."""
    if source.startswith("["):
        return source[1:].partition("]")[0]
    if source.count(":") == 1:
        return source.partition(":")[0]
    return source


@dataclass(frozen=True, slots=True)
class _Route:
    """A planned route: its prefix, its service and the experiments that may match."""

    prefix: bytes
    service: _Service | None
    experiments: tuple[_Experiment, ...]
    enabled: bool


class DecisionTable:
    """Everything needed to decide, compiled from one config and one health view.

    ``unavailable``: clusters known to have no healthy host (pins to them fall back or are
    refused). ``env``: where ``hmac-key-env`` keys are read (``os.environ``). Immutable
    after construction, except for bounded memo caches; swap a new table in to change.
    """

    def __init__(
        self,
        config: Config,
        unavailable: frozenset[str] = frozenset(),
        env: Mapping[str, str] | None = None,
        *,
        version: str = "",
    ) -> None:
        env = os.environ if env is None else env
        self.version = version
        self.config = config
        self.services = {name: _Service(name, config, unavailable, env) for name in config.versions}
        self.experiments = {name: _Experiment(name, e) for name, e in config.experiments.items()}
        vhosts: dict[str, list[_Route]] = {}
        domains: dict[str, tuple[str, ...]] = {vh.name: vh.domains for vh in config.virtual_hosts()}
        for plan in route_plans(config):
            vhosts.setdefault(plan.vhost, []).append(
                _Route(
                    plan.prefix.encode(),
                    self.services[plan.service] if plan.service else None,
                    tuple(self.experiments[e] for e in plan.experiments),
                    plan.enabled,
                )
            )
        self._hosts: HostMatcher[PrefixIndex[_Route]] = HostMatcher(
            (domains[name], PrefixIndex((r.prefix, r) for r in routes))
            for name, routes in vhosts.items()
        )
        self._tags: dict[str, Decision] = {}
        #: Whether decisions read the downstream address (some pin trusts by CIDR).
        self.needs_source = any(s.trust == "cidr" for s in self.services.values())
        #: Header names the adapters must hand over (others are never looked at).
        self.wanted = wanted_headers(config)
        #: Missing HMAC keys, for the operator (the service logs them once per table).
        self.problems = tuple(
            f"versions.{name}.pin.hmac-key-env: environment variable "
            f"{config.versions[name].pin.hmac_key_env} is not set; every pin is refused"  # type: ignore[union-attr]
            for name, s in self.services.items()
            if s.trust == "hmac" and s.hmac_key is None
        )

    def decide(self, headers: Headers, source: str | None, counters: Counters) -> Decision:
        """The decision for one request. Never raises on any header content."""
        counters.requests += 1
        authority = headers.get(":authority")
        path_values = headers.get(":path")
        if not authority or not path_values:
            counters.not_routed += 1
            return NO_DECISION
        routes = self._hosts.match(authority[0])
        path = path_values[0]
        route = routes.match(path) if routes is not None else None
        if route is None or not route.enabled:
            counters.not_routed += 1
            return NO_DECISION
        req = Request(headers, counters)
        service = route.service
        if service is not None:
            pinned = service.pinned(req, path, source)
            if pinned is not None:
                return pinned
        tag_prefix = ""
        cookie = None
        if route.experiments:
            method_values = headers.get(":method")
            method = method_values[0] if method_values else b""
            for exp in route.experiments:
                if not exp.matches(req, path, method):
                    continue
                assigned = exp.assign(req)
                if assigned is None:
                    continue
                tag, version, cookie = assigned
                counters.decided_experiment += 1
                if cookie is not None:
                    counters.sticky_cookie_issued += 1
                if version is not None and service is not None:
                    kind = DecisionKind.EXPERIMENT
                    return _with_cookie(service.decision(tag, version, kind), cookie)
                tag_prefix = tag + ","
                break
        if service is None:
            return _with_cookie(self._tag_only(tag_prefix.rstrip(",")), cookie)
        decision = service.canary(req, tag_prefix)
        if service.canary_version is not None:
            counters.decided_canary += 1
        elif not tag_prefix:
            counters.decided_route += 1
        return _with_cookie(decision, cookie)

    def _tag_only(self, tag: str) -> Decision:
        """An experiment on a route of no versioned service: only the tag is set."""
        if not tag:
            return NO_DECISION
        found = self._tags.get(tag)
        if found is None:
            header = self.config.decision.header
            found = Decision(
                tag, ((header, tag),) if header else (), kind=DecisionKind.EXPERIMENT
            )
            self._tags[tag] = found
        return found


def _with_cookie(decision: Decision, cookie: str | None) -> Decision:
    if cookie is None:
        return decision
    return Decision(
        decision.tag,
        decision.set_headers,
        decision.remove_headers,
        decision.clear_route,
        decision.status,
        decision.body,
        set_cookie=cookie,
        kind=decision.kind,
    )
