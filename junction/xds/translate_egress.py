"""Egress: a second listener for the application's outbound calls, with versioned routes.

Pure, like the rest of translation. With an ``egress`` section
(:mod:`junction.config.egress`) the snapshot gets:

- a Listener ``junction_egress`` on ``egress.listen`` (loopback by default): an HTTP
  connection manager with only the router (no ext_proc: every decision is a native
  header match, so egress costs no call to the decision service) and the same access
  loggers as ingress; routes over RDS on the ADS stream;
- a RouteConfiguration ``junction_egress_routes``: one virtual host per listed service,
  domains ``NAME`` and ``NAME:PORT`` (PORT: the egress port, as a client puts it in Host
  when calling ``http://NAME:PORT/``). In it, one route per non-default version: prefix
  ``/`` AND the propagated header (:func:`junction.config.egress.egress_header`) exactly
  that version -> the version's cluster; then prefix ``/`` -> the default version's
  cluster, for requests without the header or with a version the service does not have.
  The header is left on the request: the callee forwards it on its own calls, so a whole
  call chain stays on one release ("the same release version references the same
  resources").

Ingress keeps outsiders from steering internal calls (:func:`guard_ingress`): every
ingress route gets ``request_headers_to_remove`` for the egress headers, except, on a
version route the decision service picked (matched on ``x-junction-cluster``), the
service's own propagated header, which the decision service has just set for a trusted
pin. The plain route of a decided prefix strips it too: a request gets there when the
service chose no version (it removed the header itself) or failed open (the client's
value would otherwise pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from junction.config.decisions import CLUSTER_HEADER
from junction.config.egress import egress_header
from junction.config.model import Config
from junction.extproc.tiers import SERVICE
from junction.xds.translate_cluster import ads_config_source, duration
from junction.xds.translate_extproc import EXTPROC_FILTER, tiers_by_route

__all__ = [
    "EGRESS_LISTENER",
    "EGRESS_ROUTES",
    "build_egress_listener",
    "build_egress_routes",
    "egress_headers",
    "egress_resources",
    "guard_ingress",
]

EGRESS_LISTENER = "junction_egress"
EGRESS_ROUTES = "junction_egress_routes"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"


def _pack(message: Message) -> any_pb2.Any:
    # As translate.pack (deterministic); not imported from there: translate imports this.
    out = any_pb2.Any()
    out.Pack(message, deterministic=True)
    return out


def egress_headers(config: Config) -> frozenset[str]:
    """Every header that picks a version on egress (empty without an egress section)."""
    if config.egress is None:
        return frozenset()
    return frozenset(egress_header(config, s) for s in config.egress.services)


def egress_resources(
    config: Config, access_log: Sequence[accesslog_pb2.AccessLog] = ()
) -> tuple[list[tuple[str, Message]], list[tuple[str, Message]]]:
    """``(listeners, route configurations)`` to add to the snapshot (empty lists without
    an egress section)."""
    listener = build_egress_listener(config, access_log)
    routes = build_egress_routes(config)
    if listener is None or routes is None:
        return [], []
    return [(EGRESS_LISTENER, listener)], [(EGRESS_ROUTES, routes)]


def build_egress_listener(
    config: Config, access_log: Sequence[accesslog_pb2.AccessLog] = ()
) -> listener_pb2.Listener | None:
    """The egress LDS resource (None without an egress section)."""
    egress = config.egress
    if egress is None:
        return None
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="junction_egress",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=EGRESS_ROUTES),
        http_filters=[
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=_pack(router_pb2.Router()))
        ],
        access_log=list(access_log),
    )
    idle = config.listener.timeout.idle
    if idle is not None:
        hcm.common_http_protocol_options.idle_timeout.CopyFrom(duration(idle))
    return listener_pb2.Listener(
        name=EGRESS_LISTENER,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                protocol=address_pb2.SocketAddress.TCP,
                address=egress.listen.address,
                port_value=egress.listen.port,
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=_pack(hcm))]
            )
        ],
    )


def build_egress_routes(config: Config) -> route_pb2.RouteConfiguration | None:
    """The egress RDS resource (None without an egress section)."""
    egress = config.egress
    if egress is None:
        return None
    timeout = config.listener.timeout.request
    hosts = []
    for service in egress.services:
        sv = config.versions[service]
        header = egress_header(config, service)
        routes = [
            _route(f"{service}@{version}", sv.clusters[version], timeout, header, version)
            for version in sorted(sv.clusters)
            if version != sv.default
        ]
        routes.append(_route(f"{service}@default", sv.clusters[sv.default], timeout, None, None))
        hosts.append(
            route_components_pb2.VirtualHost(
                name=service,
                domains=[service, f"{service}:{egress.listen.port}"],
                routes=routes,
            )
        )
    return route_pb2.RouteConfiguration(name=EGRESS_ROUTES, virtual_hosts=hosts)


def _route(
    name: str, cluster: str, timeout: float | None, header: str | None, version: str | None
) -> route_components_pb2.Route:
    match = route_components_pb2.RouteMatch(prefix="/")
    if header is not None and version is not None:
        match.headers.append(
            route_components_pb2.HeaderMatcher(
                name=header, string_match=string_pb2.StringMatcher(exact=version)
            )
        )
    action = route_components_pb2.RouteAction(cluster=cluster)
    if timeout is not None:
        action.timeout.CopyFrom(duration(timeout))
    return route_components_pb2.Route(name=name, match=match, route=action)


def guard_ingress(
    config: Config, routes: route_pb2.RouteConfiguration
) -> route_pb2.RouteConfiguration:
    """``routes`` (ingress) with the egress headers removed from requests on every route
    where the decision service does not set them; unchanged without an egress section."""
    headers = egress_headers(config)
    if not headers:
        return routes
    tiers = tiers_by_route(config)
    for vh in routes.virtual_hosts:
        for route in vh.routes:
            tier = tiers.get((vh.name, route.match.prefix))
            plan = tier.plan if tier is not None and tier.tier == SERVICE else None
            own = ""
            # Only a version route (matched on the decision's cluster header) carries a
            # header the decision service set. On the plain route the service either
            # removed it already, or failed open and left the client's value there.
            if (
                plan is not None
                and plan.enabled
                and plan.service is not None
                and not _extproc_disabled(route)
                and any(h.name == CLUSTER_HEADER for h in route.match.headers)
            ):
                pin = config.versions[plan.service].pin
                own = pin.propagate if pin is not None else ""
            # A native decision route (translate_native) overwrites the header itself: a
            # client's value cannot survive it, and removing it here would drop Junction's
            # own (Envoy evaluates the weighted clusters' headers before the route's).
            keep = {own} | _overwritten(route) | set(route.request_headers_to_remove)
            route.request_headers_to_remove.extend(sorted(headers - keep))
    return routes


def _overwritten(route: route_components_pb2.Route) -> set[str]:
    """Request headers ``route`` always sets, overwriting: at the route level, or in every
    one of its weighted clusters."""
    def overwrites(options: Iterable[base_pb2.HeaderValueOption]) -> set[str]:
        return {
            o.header.key
            for o in options
            if o.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        }

    out = overwrites(route.request_headers_to_add)
    members = route.route.weighted_clusters.clusters
    if members:
        out |= set.intersection(*(overwrites(m.request_headers_to_add) for m in members))
    return out


def _extproc_disabled(route: route_components_pb2.Route) -> bool:
    packed = route.typed_per_filter_config.get(EXTPROC_FILTER)
    if packed is None:
        return False
    per_route = ext_proc_pb2.ExtProcPerRoute()
    packed.Unpack(per_route)
    return bool(per_route.disabled)
