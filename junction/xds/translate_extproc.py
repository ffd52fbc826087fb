"""The Envoy side of the decision service (:mod:`junction.extproc`): what translation adds
when the config has ``versions`` with pins or a canary, or ``experiments``.

Pure, like the rest of translation; which routes need a decision comes from
:func:`junction.extproc.plan.route_plans`, the view the decision service itself uses, and
who makes it from :mod:`junction.extproc.tiers`: ``native`` routes get Envoy-only routes
(:mod:`junction.xds.translate_native`) and ext_proc off; what follows is for ``service``
routes. With no ``service`` route, no ext_proc filter is installed at all.

- **Header-matched routes.** In front of each ``service`` prefix route of a versioned service,
  one route per version cluster: the same prefix AND ``x-junction-cluster`` exactly that
  cluster, routing to it (same host rewrite and timeout). The decision service sets the
  header and asks Envoy to re-pick the route (``clear_route_cache``); the plain weighted
  route stays last, and is what a request gets when the service says nothing or fails open.
- **The client cannot choose.** ``x-junction-cluster`` (and the decision header) is removed
  from every request by an HCM early header mutation, which runs before route selection
  (HCM ``early_header_mutation_extensions``), so neither the first route match nor anything
  after it sees a client's value.
- **The ext_proc filter**, just before the router: request headers only, over gRPC (static
  cluster ``junction_extproc``) or Envoy's ``http_service`` (static HTTP/1.1 cluster
  ``junction_extproc_http``), per ``decision.transport``; ``failure_mode_allow`` from
  ``decision.failure-mode`` (closed answers 503); ``message_timeout`` from
  ``decision.timeout``. The downstream address is sent (attribute ``source.address``) only
  when a pin trusts by CIDR.
- **Disabled where the service decides nothing** (``ExtProcPerRoute.disabled``), e.g.
  ``/asset`` and ``native`` routes: those requests never wait for the service.
- **Sticky cookies.** The service puts a freshly issued cookie in dynamic metadata; routes
  of experiments with ``sticky-cookie`` copy it into ``Set-Cookie`` on the response
  (``%DYNAMIC_METADATA(...)%``; absent metadata adds nothing). One message per request:
  Envoy 1.40's ``http_service`` client cannot carry a second (response headers) message.
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import (
    base_pb2,
    extension_pb2,
    grpc_service_pb2,
    http_service_pb2,
    http_uri_pb2,
)
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2,
)
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from junction.config.decisions import CLUSTER_HEADER
from junction.config.model import Config
from junction.extproc.plan import (
    METADATA_NAMESPACE,
    SET_COOKIE_KEY,
    wanted_headers,
)
from junction.extproc.tiers import NATIVE, SERVICE, RouteTier, route_tiers
from junction.xds.names import EXTPROC_CLUSTER, EXTPROC_HTTP_CLUSTER
from junction.xds.translate_cluster import duration
from junction.xds.translate_native import canary_split, pin_routes, tag_plain

__all__ = [
    "EXTPROC_FILTER",
    "STRIP_EXTENSION",
    "decision_routes",
    "early_header_mutations",
    "extproc_filter",
    "tiers_by_route",
    "uses_service",
]

EXTPROC_FILTER = "envoy.filters.http.ext_proc"
STRIP_EXTENSION = "envoy.http.early_header_mutation.header_mutation"
#: The path Envoy POSTs to on the ``http_service`` transport (the host part is only the
#: ``:authority`` sent; the cluster decides where it goes).
HTTP_SERVICE_URI = "http://junction-extproc/process"


def _pack(message: Message) -> any_pb2.Any:
    # As translate.pack (deterministic, so equal configs give equal snapshot versions);
    # not imported from there: translate imports this module.
    out = any_pb2.Any()
    out.Pack(message, deterministic=True)
    return out


def tiers_by_route(config: Config) -> dict[tuple[str, str], RouteTier]:
    """(virtual host name, prefix) -> who decides there (:mod:`junction.extproc.tiers`);
    empty when no route needs a decision."""
    tiers = route_tiers(config)
    if not any(t.plan.enabled for t in tiers):
        return {}
    return {(t.plan.vhost, t.plan.prefix): t for t in tiers}


def uses_service(tiers: dict[tuple[str, str], RouteTier]) -> bool:
    """Whether some route calls the decision service (else no ext_proc filter at all)."""
    return any(t.tier == SERVICE for t in tiers.values())


def extproc_filter(config: Config) -> hcm_pb2.HttpFilter:
    """The ext_proc HTTP filter for ``config.decision``."""
    decision = config.decision
    mode = processing_mode_pb2.ProcessingMode
    ext = ext_proc_pb2.ExternalProcessor(
        failure_mode_allow=decision.failure_mode == "open",
        processing_mode=mode(
            request_header_mode=mode.SEND,
            response_header_mode=mode.SKIP,
            request_body_mode=mode.NONE,
            response_body_mode=mode.NONE,
            request_trailer_mode=mode.SKIP,
            response_trailer_mode=mode.SKIP,
        ),
        message_timeout=duration(decision.timeout),
        # Default mutation_rules: the service sets only the cluster header, the decision
        # tag and the propagated version; Host, :authority, :method, :scheme and
        # x-envoy-* stay off limits.
        stat_prefix="junction",
        # Only the headers decisions read: less for Envoy to encode and send, less for the
        # service to parse (matters most on the JSON transport).
        forward_rules=ext_proc_pb2.HeaderForwardingRules(
            allowed_headers=string_pb2.ListStringMatcher(
                patterns=[string_pb2.StringMatcher(exact=h) for h in sorted(wanted_headers(config))]
            )
        ),
    )
    if decision.transport == "grpc":
        ext.grpc_service.CopyFrom(
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXTPROC_CLUSTER)
            )
        )
    else:
        ext.http_service.CopyFrom(
            ext_proc_pb2.ExtProcHttpService(
                http_service=http_service_pb2.HttpService(
                    http_uri=http_uri_pb2.HttpUri(
                        uri=HTTP_SERVICE_URI,
                        cluster=EXTPROC_HTTP_CLUSTER,
                        timeout=duration(decision.timeout),
                    )
                )
            )
        )
    if decision.failure_mode == "closed":
        ext.status_on_error.CopyFrom(
            http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable)
        )
    pins = [sv.pin for sv in config.versions.values() if sv.pin is not None]
    if any(p.trust == "cidr" for p in pins):
        ext.request_attributes.append("source.address")
    if any(e.sticky_cookie is not None for e in config.experiments.values()):
        ext.metadata_options.receiving_namespaces.untyped.append(METADATA_NAMESPACE)
    return hcm_pb2.HttpFilter(name=EXTPROC_FILTER, typed_config=_pack(ext))


def early_header_mutations(config: Config) -> list[extension_pb2.TypedExtensionConfig]:
    """Remove the routing header, and the decision header, from every request before a
    route is picked: only the decision service sets them. (A client's decision tag would
    otherwise reach upstreams and access logs on routes without a decision, or when the
    service fails open, and pollute experiment results.)"""
    names = [CLUSTER_HEADER]
    if config.decision.header:
        names.append(config.decision.header)
    strip = header_mutation_pb2.HeaderMutation(
        mutations=[mutation_rules_pb2.HeaderMutation(remove=name) for name in names]
    )
    return [extension_pb2.TypedExtensionConfig(name=STRIP_EXTENSION, typed_config=_pack(strip))]


def decision_routes(
    config: Config,
    tier: RouteTier | None,
    plain: route_components_pb2.Route,
    unavailable: frozenset[str] = frozenset(),
    *,
    filter_installed: bool = True,
) -> Iterator[route_components_pb2.Route]:
    """The routes for one prefix route: on a ``service`` route its header-matched version
    routes, on a ``native`` one its pin routes (:mod:`junction.xds.translate_native`), then
    ``plain`` itself (the canary split when there is a canary), with the per-route ext_proc
    setting (only when ``filter_installed``) and Set-Cookie copying. ``unavailable``:
    version clusters with no usable host."""
    if tier is None:
        yield plain
        return
    plan = tier.plan
    if tier.hash_canary and plan.service is not None:
        canary_split(config, plan.service, plain, tagged=tier.tier == NATIVE)
    elif tier.tier == NATIVE and plan.service is not None:
        tag_plain(config, plan.service, plain)
    sets_cookie = any(config.experiments[e].sticky_cookie is not None for e in plan.experiments)
    versioned: list[route_components_pb2.Route] = []
    if tier.native_pin and plan.service is not None:
        versioned.extend(pin_routes(config, plan.service, plain, unavailable))
    if tier.tier == SERVICE and plan.service is not None:
        for cluster in sorted(config.versions[plan.service].clusters.values()):
            route = route_components_pb2.Route()
            route.CopyFrom(plain)
            route.name = f"{plain.name}@{cluster}"
            route.route.ClearField("weighted_clusters")
            route.route.ClearField("hash_policy")
            route.route.cluster = cluster
            route.match.headers.append(
                route_components_pb2.HeaderMatcher(
                    name=CLUSTER_HEADER,
                    string_match=string_pb2.StringMatcher(exact=cluster),
                )
            )
            versioned.append(route)
    for route in (*versioned, plain):
        if tier.tier != SERVICE:
            if filter_installed:
                route.typed_per_filter_config[EXTPROC_FILTER].CopyFrom(
                    _pack(ext_proc_pb2.ExtProcPerRoute(disabled=True))
                )
        elif sets_cookie:
            route.response_headers_to_add.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(
                        key="set-cookie",
                        value=f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{SET_COOKIE_KEY})%",
                    ),
                    append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
                    keep_empty_value=False,
                )
            )
        yield route
