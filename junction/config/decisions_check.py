"""Checks of the decision sections that need the rest of the document too.

A version cluster must be routed to, an arm's version must exist, the reserved
:data:`~junction.config.decisions.CLUSTER_HEADER` is never a key, pin or decision header,
... :func:`junction.config.load.cross_check` calls :func:`cross_check_decisions`. Apart
from :mod:`junction.config.decisions` so that module needs no :class:`Config` (which is
built from its sections): the package's imports point one way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from junction.config.decisions import CLUSTER_HEADER, PinSettings
from junction.config.model import Config

__all__ = ["cross_check_decisions"]

Path = tuple[str | int, ...]


def cross_check_decisions(config: Config) -> list[tuple[Path, str]]:
    """Problems that need the routes and the decision sections together, as (path, message)."""
    return list(_cross(config))


def _cross(config: Config) -> Iterator[tuple[Path, str]]:
    routed: set[str] = set()
    for block in config.route_blocks():
        routed.update(block.cluster)
    owner: dict[str, str] = {}
    # A service reached only through egress needs no route: a declared cluster will do.
    egress = set(config.egress.services) if config.egress is not None else set()
    for service, sv in config.versions.items():
        for version, cluster in sv.clusters.items():
            path: Path = ("versions", service, "clusters", version)
            if cluster not in routed and service not in egress:
                yield path, f"cluster {cluster!r} is not routed to by any route"
            elif cluster not in routed and cluster not in config.cluster.loadbalancer:
                yield path, (
                    f"cluster {cluster!r} is neither routed to nor declared under "
                    "cluster.loadbalancer"
                )
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
