"""Translation's decision wiring: the ext_proc filter, header-matched version routes, the
client's routing header stripped, ext_proc off where nothing is decided."""

from __future__ import annotations

import textwrap

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2

from junction.catalog.model import Catalog
from junction.config.load import load_config
from junction.xds.names import (
    EXTPROC_CLUSTER,
    EXTPROC_HTTP_CLUSTER,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
)
from junction.xds.resources import LISTENER, ROUTE, Snapshot
from junction.xds.translate import ROUTER_FILTER, translate
from junction.xds.translate_extproc import EXTPROC_FILTER
from junction.xds.validate import check_snapshot

BASE = """\
listener:
  listen: {port: 8000}
  timeout: {request: 7}
route:
  - domain: ["example.com"]
    host-header: www.example.com
    cluster:
      web-api-perl: {prefix: ["/api"], weight: 90}
      web-api-go:   {prefix: ["/api", "/api/foobar"], weight: 10}
      web-asset:    {prefix: ["/asset"]}
  - domain: ["qa.example.com"]
    cluster:
      web-qa: {prefix: ["/"]}
cluster:
  loadbalancer: {web-api-perl: {}, web-api-go: {}, web-asset: {}, web-qa: {}}
"""

VERSIONS = """\
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    pin: {trust: any}
"""
FORCED = "decision: {force-service: true}\n"


def snap(text: str) -> Snapshot:
    return translate(load_config(textwrap.dedent(text), "t"), Catalog())


def hcm(s: Snapshot) -> hcm_pb2.HttpConnectionManager:
    listener = s.of_type(LISTENER)[LISTENER_NAME].message
    out = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(out)
    return out


def ext_proc(s: Snapshot) -> ext_proc_pb2.ExternalProcessor:
    (f,) = [f for f in hcm(s).http_filters if f.name == EXTPROC_FILTER]
    out = ext_proc_pb2.ExternalProcessor()
    f.typed_config.Unpack(out)
    return out


def routes(s: Snapshot, vhost: int = 0) -> list[route_components_pb2.Route]:
    return list(s.of_type(ROUTE)[ROUTE_CONFIG_NAME].message.virtual_hosts[vhost].routes)


def disabled(route: route_components_pb2.Route) -> bool:
    if EXTPROC_FILTER not in route.typed_per_filter_config:
        return False
    per_route = ext_proc_pb2.ExtProcPerRoute()
    route.typed_per_filter_config[EXTPROC_FILTER].Unpack(per_route)
    return per_route.disabled


def test_no_decisions_no_wiring() -> None:
    for text in (
        BASE,
        BASE + "versions: {web-api: {default: perl, clusters: {perl: web-api-perl}}}\n",
    ):
        s = snap(text)
        assert [f.name for f in hcm(s).http_filters] == [ROUTER_FILTER]
        assert not hcm(s).early_header_mutation_extensions
        assert all(not r.match.headers and not r.typed_per_filter_config for r in routes(s))


def test_header_routes_come_before_the_plain_route_of_each_versioned_prefix() -> None:
    s = snap(BASE + VERSIONS + FORCED)
    got = [
        (
            r.name,
            r.route.cluster or "weighted",
            [(h.name, h.string_match.exact) for h in r.match.headers],
        )
        for r in routes(s)
    ]
    assert got == [
        ("/api/foobar@web-api-go", "web-api-go", [("x-junction-cluster", "web-api-go")]),
        ("/api/foobar@web-api-perl", "web-api-perl", [("x-junction-cluster", "web-api-perl")]),
        ("/api/foobar", "web-api-go", []),
        ("/asset", "web-asset", []),
        ("/api@web-api-go", "web-api-go", [("x-junction-cluster", "web-api-go")]),
        ("/api@web-api-perl", "web-api-perl", [("x-junction-cluster", "web-api-perl")]),
        ("/api", "weighted", []),
    ]
    by_name = {r.name: r for r in routes(s)}
    for name in ("/api@web-api-go", "/api"):
        assert by_name[name].match.prefix == "/api"
        assert by_name[name].route.host_rewrite_literal == "www.example.com"
        assert by_name[name].route.timeout.seconds == 7
    # ext_proc runs on the versioned routes only.
    assert [r.name for r in routes(s) if disabled(r)] == ["/asset"]
    assert all(disabled(r) for r in routes(s, vhost=1))
    assert check_snapshot(s) == []


def test_the_client_cannot_set_the_routing_header() -> None:
    (ext,) = hcm(snap(BASE + VERSIONS)).early_header_mutation_extensions
    strip = header_mutation_pb2.HeaderMutation()
    ext.typed_config.Unpack(strip)
    assert [m.remove for m in strip.mutations] == ["x-junction-cluster", "x-junction-decision"]


def test_http_transport_defaults() -> None:
    s = snap(BASE + VERSIONS + FORCED)
    assert [f.name for f in hcm(s).http_filters] == [EXTPROC_FILTER, ROUTER_FILTER]
    ext = ext_proc(s)
    assert ext.http_service.http_service.http_uri.cluster == EXTPROC_HTTP_CLUSTER
    assert ext.http_service.http_service.http_uri.timeout.ToMilliseconds() == 200
    assert ext.message_timeout.ToMilliseconds() == 200
    assert ext.failure_mode_allow
    assert not ext.HasField("grpc_service")
    mode = ext.processing_mode
    assert (mode.request_header_mode, mode.response_header_mode) == (mode.SEND, mode.SKIP)
    assert (mode.request_body_mode, mode.response_body_mode) == (mode.NONE, mode.NONE)
    assert list(ext.request_attributes) == []  # no CIDR trust: no address needed
    assert not ext.HasField("metadata_options")


def test_grpc_transport_fail_closed_cidr_and_sticky_cookies() -> None:
    text = (
        BASE
        + VERSIONS.replace("trust: any", "trust: cidr, trusted-cidrs: [10.0.0.0/8]")
        + "experiments: {feed: {service: web-api, match: {prefix: /api/feed},"
        " sticky-cookie: {name: jx}, arms: {a: {weight: 50, version: go}}}}\n"
        + "decision: {transport: grpc, failure-mode: closed, timeout: 0.05}\n"
    )
    s = snap(text)
    ext = ext_proc(s)
    assert ext.grpc_service.envoy_grpc.cluster_name == EXTPROC_CLUSTER
    assert not ext.HasField("http_service")
    assert not ext.failure_mode_allow
    assert ext.status_on_error.code == 503
    assert ext.message_timeout.ToMilliseconds() == 50
    assert list(ext.request_attributes) == ["source.address"]
    assert list(ext.metadata_options.receiving_namespaces.untyped) == ["junction.extproc"]
    api = [r for r in routes(s) if r.match.prefix == "/api"]
    assert len(api) == 3
    for r in api:  # the issued cookie is copied into Set-Cookie on every /api route
        (add,) = r.response_headers_to_add
        assert add.header.key == "set-cookie"
        assert add.header.value == "%DYNAMIC_METADATA(junction.extproc:set-cookie)%"
        assert not add.keep_empty_value
    assert not any(r.response_headers_to_add for r in routes(s) if r.match.prefix == "/asset")


def test_tag_only_experiment_enables_ext_proc_without_header_routes() -> None:
    s = snap(
        BASE + "experiments: {banner: {match: {prefix: /asset/img}, arms: {b: {weight: 5}}}}\n"
    )
    assert [f.name for f in hcm(s).http_filters] == [EXTPROC_FILTER, ROUTER_FILTER]
    assert not any(r.match.headers for r in routes(s))
    assert [r.name for r in routes(s) if not disabled(r)] == ["/asset"]
