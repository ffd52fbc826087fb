"""Decisions Envoy makes itself (:mod:`junction.extproc.tiers`): native pin routes and the
sticky canary split. Pure, like the rest of translation.

- **Pin routes.** In front of the plain route of a ``native`` prefix route, per version
  (sorted): the same prefix AND the pin header exactly that version
  (``HeaderMatcher.string_match.exact``; a repeated header is matched as its values
  joined by commas, so ``go`` + ``perl`` pins nothing, as in the service), then the same
  for the query parameter (``QueryParameterMatcher``), only when the pin header is absent
  (the service reads the header first and never falls through to the query). Each routes
  to its version's cluster and sets, like the service, the decision tag (``pin=go``) and
  the propagated version (``request_headers_to_add``, overwriting a client's value).
- **when-unavailable.** A version cluster the catalog knows with no healthy or degraded
  instance: its pin routes go to the default version (tag ``pin=go,fallback=perl``) or,
  with ``when-unavailable: reject``, answer a local 503 (``direct_response``). The routes
  are rebuilt when that changes (the control plane re-translates on catalog changes).
- **Sticky canary.** The plain route becomes weighted clusters, candidate first, weights
  out of 10000 (``weight * 100`` and the rest), ``use_hash_policy`` with the canary key
  as hash policy (header ``terminal``, then cookie without ``ttl``): a request whose key
  hashes below the weight goes to the candidate; without a key Envoy's random value
  picks, with the same split (``WeightedCluster.use_hash_policy``, ``RouteAction
  .hash_policy``; the function is pinned down in :mod:`junction.extproc.envoy_hash`). On a
  ``native`` route each side also sets the decision tag (``canary=go``) and the version.
- **Pins without a canary**: the plain route of a ``native`` route keeps the YAML weights,
  tagged ``route``, and drops a client's propagated-version header, as the service does.
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from junction.catalog.model import Catalog, Health
from junction.config.decisions import BUCKETS, ServiceVersions
from junction.config.model import Config

__all__ = ["canary_split", "pin_routes", "tag_plain", "unavailable_versions"]

_USABLE = (Health.HEALTHY, Health.DEGRADED)  # as the decision service counts a host usable


def unavailable_versions(config: Config, catalog: Catalog) -> frozenset[str]:
    """Version clusters the catalog knows with no usable instance (pins fall back or 503).
    A cluster the catalog does not know at all is not counted: nothing is known yet."""
    return frozenset(
        cluster
        for sv in config.versions.values()
        for cluster in sv.clusters.values()
        if cluster in catalog.services
        and not any(i.health in _USABLE for i in catalog.instances(cluster))
    )


def _set(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _tags(
    config: Config, sv: ServiceVersions, tag: str, version: str | None
) -> list[base_pb2.HeaderValueOption]:
    out = []
    if config.decision.header:
        out.append(_set(config.decision.header, tag))
    propagate = sv.pin.propagate if sv.pin is not None else ""
    if propagate and version is not None:
        out.append(_set(propagate, version))
    return out


def pin_routes(
    config: Config, service: str, plain: rc.Route, unavailable: frozenset[str]
) -> Iterator[rc.Route]:
    """The header-, then query-matched pin routes of one prefix route, before ``plain``."""
    sv = config.versions[service]
    pin = sv.pin
    assert pin is not None and pin.trust == "any" and pin.cookie is None  # tiers.py
    # (route name mark, version, match): "#" header pins, "?" query pins.
    matchers: list[tuple[str, str, rc.RouteMatch]] = []
    if pin.header is not None:
        for version in sorted(sv.clusters):
            match = rc.RouteMatch(prefix=plain.match.prefix)
            match.headers.append(
                rc.HeaderMatcher(
                    name=pin.header, string_match=string_pb2.StringMatcher(exact=version)
                )
            )
            matchers.append(("#", version, match))
    if pin.query is not None:
        for version in sorted(sv.clusters):
            match = rc.RouteMatch(prefix=plain.match.prefix)
            match.query_parameters.append(
                rc.QueryParameterMatcher(
                    name=pin.query, string_match=string_pb2.StringMatcher(exact=version)
                )
            )
            if pin.header is not None:
                # Only without the header: present_match inverted (HeaderMatcher docs).
                match.headers.append(
                    rc.HeaderMatcher(name=pin.header, present_match=True, invert_match=True)
                )
            matchers.append(("?", version, match))
    for mark, version, match in matchers:
        yield _pin_route(config, sv, service, plain, version, match, mark, unavailable)


def _pin_route(
    config: Config,
    sv: ServiceVersions,
    service: str,
    plain: rc.Route,
    version: str,
    match: rc.RouteMatch,
    kind: str,
    unavailable: frozenset[str],
) -> rc.Route:
    route = rc.Route(name=f"{plain.name}{kind}pin={version}", match=match)
    cluster = sv.clusters[version]
    tag, chosen = f"pin={version}", version
    if cluster in unavailable:
        assert sv.pin is not None
        if sv.pin.when_unavailable == "reject":
            route.direct_response.status = 503
            route.direct_response.body.inline_string = (
                f"version {version} of {service} has no healthy host\n"
            )
            return route
        tag, chosen = f"{tag},fallback={sv.default}", sv.default
    route.route.CopyFrom(plain.route)
    route.route.ClearField("weighted_clusters")
    route.route.ClearField("hash_policy")
    route.route.cluster = sv.clusters[chosen]
    route.request_headers_to_add.extend(_tags(config, sv, tag, chosen))
    return route


def canary_split(config: Config, service: str, plain: rc.Route, *, tagged: bool) -> None:
    """Turn ``plain`` (in place) into the sticky canary split of ``service``."""
    sv = config.versions[service]
    canary = sv.canary
    assert canary is not None
    limit = round(canary.weight * 100)
    action = plain.route
    action.ClearField("cluster")
    action.ClearField("weighted_clusters")
    for version, weight in ((canary.version, limit), (sv.default, BUCKETS - limit)):
        member = action.weighted_clusters.clusters.add(
            name=sv.clusters[version], weight=wrappers_pb2.UInt32Value(value=weight)
        )
        if tagged:
            member.request_headers_to_add.extend(_tags(config, sv, f"canary={version}", version))
    if canary.key.header is None and canary.key.cookie is None:
        return  # `key: random`: Envoy's random value is the per-request split
    action.weighted_clusters.use_hash_policy.value = True
    if canary.key.header is not None:
        action.hash_policy.add(terminal=True).header.header_name = canary.key.header
    if canary.key.cookie is not None:
        action.hash_policy.add().cookie.name = canary.key.cookie


def tag_plain(config: Config, service: str, plain: rc.Route) -> None:
    """On a native pin route without a canary: the plain route tags ``route`` and drops a
    client's propagated version (nothing was chosen), as the service's ``route`` decision."""
    sv = config.versions[service]
    plain.request_headers_to_add.extend(_tags(config, sv, "route", None))
    if sv.pin is not None and sv.pin.propagate:
        plain.request_headers_to_remove.append(sv.pin.propagate)
