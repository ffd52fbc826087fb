"""Which routes need a decision, and what for: the one view translation and the decision
table share, so Envoy's wiring and the service's behaviour cannot drift apart.

A prefix route "belongs" to a versioned service when one of its clusters is a version
cluster of that service (``versions.<service>.clusters``; config validation ensures at
most one service per route). Such a route gets, in Envoy, one header-matched route per
version cluster in front of it, and the ext_proc filter stays enabled on it when there is
something to decide: a pin, a canary, or an experiment whose requests can reach the route
(its prefix overlaps the route's, and no route Envoy tries first takes them all).
Every other route has ext_proc disabled (``ExtProcPerRoute.disabled``) and costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from junction.config.model import Config, PrefixRoute

__all__ = [
    "METADATA_NAMESPACE",
    "SET_COOKIE_KEY",
    "RoutePlan",
    "overlaps",
    "reaches",
    "route_plans",
    "service_of_cluster",
    "uses_decisions",
    "wanted_headers",
]

#: Where the decision service puts a freshly issued sticky cookie: dynamic metadata
#: ``METADATA_NAMESPACE.SET_COOKIE_KEY``, which the planned routes copy into a
#: ``Set-Cookie`` response header (``%DYNAMIC_METADATA(...)%``; absent: no header). The
#: filter must list the namespace in ``metadata_options.receiving_namespaces``.
METADATA_NAMESPACE = "junction.extproc"
SET_COOKIE_KEY = "set-cookie"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What the decision service does for one prefix route of one virtual host."""

    vhost: str
    prefix: str
    #: The versioned service the route belongs to (None: none of its clusters is a version).
    service: str | None
    #: Experiments that may match requests on this route, in document order.
    experiments: tuple[str, ...]
    #: Whether Envoy calls the decision service for this route at all.
    enabled: bool


def service_of_cluster(config: Config) -> dict[str, str]:
    """Version cluster -> the service it is a version of."""
    return {
        cluster: service
        for service, sv in config.versions.items()
        for cluster in sv.clusters.values()
    }


def overlaps(a: str, b: str) -> bool:
    """Whether some path starts with both prefixes."""
    return a.startswith(b) or b.startswith(a)


def uses_decisions(config: Config) -> bool:
    """Whether any route decides (natively in Envoy or through the service: which one is
    :mod:`junction.extproc.tiers`' choice)."""
    return any(p.enabled for p in route_plans(config))


def route_plans(config: Config) -> tuple[RoutePlan, ...]:
    """One plan per (virtual host, prefix route), in Envoy's order (longest prefix first)."""
    owner = service_of_cluster(config)
    plans = []
    for vh in config.virtual_hosts():
        for i, route in enumerate(vh.routes):
            earlier = tuple(r.prefix for r in vh.routes[:i])
            plans.append(_plan(config, owner, vh.name, route, earlier))
    return tuple(plans)


def wanted_headers(config: Config) -> frozenset[str]:
    """The request headers decisions read: Envoy forwards only these (ext_proc
    ``forward_rules``), and the service looks at nothing else."""
    wanted = {":authority", ":path", ":method"}
    cookies = False
    for sv in config.versions.values():
        if sv.pin is not None:
            if sv.pin.header:
                wanted.add(sv.pin.header)
            cookies |= sv.pin.cookie is not None
        if sv.canary is not None:
            if sv.canary.key.header:
                wanted.add(sv.canary.key.header)
            cookies |= sv.canary.key.cookie is not None
    for exp in config.experiments.values():
        if exp.key.header:
            wanted.add(exp.key.header)
        wanted.update(exp.match.headers)
        cookies |= exp.key.cookie is not None or exp.sticky_cookie is not None
    if cookies:
        wanted.add("cookie")
    return frozenset(wanted)


def reaches(experiment_prefix: str, prefix: str, earlier: tuple[str, ...]) -> bool:
    """Whether a request the experiment matches can be routed by the route ``prefix``,
    given the prefixes of the routes Envoy tries before it: not when an earlier route's
    prefix starts the experiment's (it takes every such request first), e.g. an experiment
    on ``/api/feed`` never reaches ``/api`` when ``/api/feed`` has its own route."""
    return overlaps(experiment_prefix, prefix) and not any(
        experiment_prefix.startswith(e) for e in earlier
    )


def _plan(
    config: Config, owner: dict[str, str], vhost: str, route: PrefixRoute, earlier: tuple[str, ...]
) -> RoutePlan:
    services = {owner[c] for c, _ in route.clusters if c in owner}
    service = min(services) if services else None  # validation allows at most one
    experiments = tuple(
        name
        for name, exp in config.experiments.items()
        if (exp.service is None or exp.service == service)
        and reaches(exp.match.prefix, route.prefix, earlier)
    )
    sv = config.versions.get(service) if service else None
    enabled = bool(experiments) or (
        sv is not None and (sv.pin is not None or sv.canary is not None)
    )
    return RoutePlan(vhost, route.prefix, service, experiments, enabled)
