"""Translation: a :class:`Config` and a :class:`Catalog` in, a :class:`Snapshot` of Envoy v3
resources out.

Pure and deterministic: it imports neither Consul, gRPC nor asyncio, reads no clock, and
the same input always yields the same messages and so the same ``Snapshot.version``
(resource order comes from sorted config views and the sorted catalog, never from dict
insertion order).

What it produces (xDS resource names in :mod:`junction.xds.names`):

- one Listener ``junction_http`` on ``listener.listen``, one filter chain holding an
  HttpConnectionManager whose routes come over RDS on the ADS stream. Routes travel in
  their own RDS resource so that a weight change never touches the listener (a listener
  update makes Envoy drain the old listener's connections);
- one RouteConfiguration ``junction_routes``: one virtual host per route block, one route
  per prefix (longest first), a single cluster or weighted clusters;
- when the config asks for per-request decisions (``versions`` with a pin or canary,
  ``experiments``): the ext_proc filter, header-matched version routes and the per-route
  ext_proc switch (see :mod:`junction.xds.translate_extproc`);
- per cluster name, a Cluster (EDS over ADS) and its ClusterLoadAssignment
  (see :mod:`junction.xds.translate_cluster`).

Timeout mapping (seconds in YAML, ``google.protobuf.Duration`` in Envoy):

=========================== ================================================================
``listener.timeout.idle``    HCM ``common_http_protocol_options.idle_timeout`` (a downstream
                             connection with no active stream is closed after it). Absent:
                             Envoy's default (1 h).
``listener.timeout.request`` ``RouteAction.timeout`` of every route (whole request, until
                             the upstream response is complete). Absent: Envoy's default
                             (15 s).
``listener.timeout.connect`` ``Cluster.connect_timeout`` of every cluster. Absent: 1 s.
=========================== ================================================================

Route validation: ``RouteConfiguration.validate_clusters`` keeps its default, which for a
route table delivered over RDS is *false*: Envoy accepts a route to an unknown cluster and
answers 503 for it, instead of rejecting the whole table. Junction never depends on that:
the xDS core sends CDS (and EDS) before RDS (:data:`junction.xds.resources.ADS_ORDER`), and
:func:`junction.xds.validate.check_snapshot` refuses a snapshot whose routes name a missing
cluster. Turning it on would turn the brief window during a cluster removal (CDS already
without the cluster, RDS not yet updated) into a NACK of the route table.

Extension points: :class:`TranslateOptions` carries HTTP filters to insert before the
router (ext_proc, Lua) and HCM access loggers (gRPC ALS), so later features add behaviour
without reshaping this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from junction.catalog.model import Catalog
from junction.config.model import Config, PrefixRoute, VirtualHost
from junction.extproc.plan import RoutePlan
from junction.xds.names import LISTENER_NAME, ROUTE_CONFIG_NAME
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from junction.xds.translate_cluster import (
    ads_config_source,
    build_cluster,
    build_load_assignment,
    duration,
)
from junction.xds.translate_extproc import (
    decision_routes,
    early_header_mutations,
    extproc_filter,
    plans_by_route,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "HCM_FILTER",
    "ROUTER_FILTER",
    "STAT_PREFIX",
    "TranslateOptions",
    "build_listener",
    "build_route_configuration",
    "http_filter",
    "pack",
    "translate",
]

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
#: Prefix of the HCM's stats (``http.<prefix>.downstream_rq_*``).
STAT_PREFIX = "junction"


@dataclass(frozen=True, kw_only=True)
class TranslateOptions:
    """What translation adds beyond the config document.

    ``extra_http_filters`` go between the HCM's start and the router, in the order given
    (the router must be last: Envoy's HCM requires a terminal filter at the end).
    ``access_log`` becomes the HCM's ``access_log`` list (e.g. the gRPC ALS logger).
    Both are Envoy messages built by their owners; they must be packed deterministically
    (:func:`pack`) so equal options give equal snapshot versions.
    """

    extra_http_filters: tuple[hcm_pb2.HttpFilter, ...] = ()
    access_log: tuple[accesslog_pb2.AccessLog, ...] = ()


DEFAULT_OPTIONS = TranslateOptions()


def translate(
    config: Config,
    catalog: Catalog,
    *,
    origin: str = "",
    config_version: str = "",
    options: TranslateOptions = DEFAULT_OPTIONS,
) -> Snapshot:
    """Every resource Envoy needs for ``config`` and ``catalog``.

    Never raises for a validated :class:`Config`. Services the catalog does not know get an
    empty ClusterLoadAssignment. ``origin`` and ``config_version`` are carried on the
    snapshot (for mapping a NACK back to the document).
    """
    names = config.cluster_names()
    return Snapshot.build(
        {
            CLUSTER: [(n, build_cluster(config, n)) for n in names],
            ENDPOINT: [
                (n, build_load_assignment(config, n, catalog.instances(n))) for n in names
            ],
            LISTENER: [(LISTENER_NAME, build_listener(config, options))],
            ROUTE: [(ROUTE_CONFIG_NAME, build_route_configuration(config))],
        },
        origin=origin,
        config_version=config_version,
    )


# ---- helpers ---------------------------------------------------------------------------


def pack(message: Message) -> any_pb2.Any:
    """``message`` in an ``Any``, serialized deterministically (stable snapshot versions)."""
    out = any_pb2.Any()
    out.Pack(message, deterministic=True)
    return out


def http_filter(name: str, config: Message) -> hcm_pb2.HttpFilter:
    """An HCM HTTP filter with its typed config (for ``TranslateOptions.extra_http_filters``)."""
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(config))


# ---- listener --------------------------------------------------------------------------


def build_listener(
    config: Config, options: TranslateOptions = DEFAULT_OPTIONS
) -> listener_pb2.Listener:
    """The LDS resource: ``listener.listen`` with one HTTP connection manager."""
    listen = config.listener.listen
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                protocol=address_pb2.SocketAddress.TCP,
                address=listen.address,
                port_value=listen.port,
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HCM_FILTER,
                        typed_config=pack(build_http_connection_manager(config, options)),
                    )
                ]
            )
        ],
    )


def build_http_connection_manager(
    config: Config, options: TranslateOptions = DEFAULT_OPTIONS
) -> hcm_pb2.HttpConnectionManager:
    """The HCM: codec AUTO (HTTP/1.1 and HTTP/2 by ALPN/preface), routes over RDS via ADS."""
    extra = list(options.extra_http_filters)
    decides = bool(plans_by_route(config))
    if decides:
        # The decision service's filter goes last before the router (translate_extproc).
        extra.append(extproc_filter(config))
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=STAT_PREFIX,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=ROUTE_CONFIG_NAME),
        http_filters=_http_filters(extra),
        access_log=list(options.access_log),
        early_header_mutation_extensions=early_header_mutations(config) if decides else [],
    )
    idle = config.listener.timeout.idle
    if idle is not None:
        hcm.common_http_protocol_options.CopyFrom(
            protocol_pb2.HttpProtocolOptions(idle_timeout=duration(idle))
        )
    return hcm


def _http_filters(extra: Sequence[hcm_pb2.HttpFilter]) -> list[hcm_pb2.HttpFilter]:
    # The router is terminal and must come last (HCM docs, "HTTP filters").
    return [*extra, http_filter(ROUTER_FILTER, router_pb2.Router())]


# ---- routes ----------------------------------------------------------------------------


def build_route_configuration(config: Config) -> route_pb2.RouteConfiguration:
    """The RDS resource: one virtual host per route block, in document order."""
    request_timeout = config.listener.timeout.request
    plans = plans_by_route(config)
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[
            _virtual_host(config, vh, request_timeout, plans) for vh in config.virtual_hosts()
        ],
        # Match "example.com:8000" against domain "example.com": clients put the port in
        # Host when it is not the scheme's default, and the YAML lists bare domains.
        # Unlike HCM strip_any_host_port, this leaves the Host header untouched.
        ignore_port_in_host_matching=True,
    )


def _virtual_host(
    config: Config,
    vh: VirtualHost,
    request_timeout: float | None,
    plans: Mapping[tuple[str, str], RoutePlan],
) -> route_components_pb2.VirtualHost:
    return route_components_pb2.VirtualHost(
        name=vh.name,
        domains=list(vh.domains),
        routes=[
            route
            for r in vh.routes
            for route in decision_routes(
                config, plans.get((vh.name, r.prefix)), _route(r, vh.host_rewrite, request_timeout)
            )
        ],
    )


def _route(
    pr: PrefixRoute, host_rewrite: str | None, request_timeout: float | None
) -> route_components_pb2.Route:
    action = route_components_pb2.RouteAction()
    if len(pr.clusters) == 1:
        action.cluster = pr.clusters[0][0]
    else:
        # Relative weights: Envoy sums them (WeightedCluster.total_weight is deprecated and
        # left unset). A weight-0 member stays listed so a ramp can start from 0.
        action.weighted_clusters.clusters.extend(
            route_components_pb2.WeightedCluster.ClusterWeight(
                name=name, weight=wrappers_pb2.UInt32Value(value=weight)
            )
            for name, weight in pr.clusters
        )
    if host_rewrite is not None:
        action.host_rewrite_literal = host_rewrite
    if request_timeout is not None:
        action.timeout.CopyFrom(duration(request_timeout))
    return route_components_pb2.Route(
        # The name shows up in access logs (%ROUTE_NAME%) and per-route stats.
        name=pr.prefix,
        match=route_components_pb2.RouteMatch(prefix=pr.prefix),
        route=action,
    )
