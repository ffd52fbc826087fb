"""The ``egress`` section: validation (path-named errors) and translation (the second
listener, its header-matched routes, and the ingress header guard)."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from junction.catalog.model import Catalog, Instance
from junction.config.errors import ConfigError
from junction.config.load import load_config
from junction.config.model import Config
from junction.xds.incremental import IncrementalTranslator
from junction.xds.names import ROUTE_CONFIG_NAME
from junction.xds.resources import LISTENER, ROUTE, Snapshot
from junction.xds.translate import translate
from junction.xds.translate_egress import EGRESS_LISTENER, EGRESS_ROUTES
from junction.xds.validate import check_snapshot, envoy_validate

BASE = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
    web-asset: {prefix: [/asset]}
cluster:
  loadbalancer:
    web-api-perl: {}
    web-api-go: {}
    web-asset: {}
    web-feed-perl: {}
    web-feed-go: {}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    %(pin)s
  web-feed:
    default: perl
    clusters: {perl: web-feed-perl, go: web-feed-go, canary: web-feed-canary}
egress:
  listen: {port: 8001}
  services: [web-feed]
"""


def text(pin: str = "", **replace: str) -> str:
    out = BASE % {"pin": pin}
    for old, new in replace.items():
        out = out.replace(old.replace("_", "-"), new)
    return out


def without_egress(doc: str) -> str:
    """The document without its egress section and the egress-only service."""
    return doc.split("  web-feed:\n")[0]


def cfg(doc: str) -> Config:
    # web-feed-canary must be declared too; most tests want a valid document.
    doc = doc.replace("    web-feed-go: {}\n", "    web-feed-go: {}\n    web-feed-canary: {}\n", 1)
    return load_config(doc, "t.yaml")


def errors(doc: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(doc, "t.yaml")
    return info.value.render()


def the(snap: Snapshot, type_url: str, name: str) -> object:
    return snap.of_type(type_url)[name].message


def test_egress_only_service_needs_no_route_but_declared_clusters() -> None:
    message = errors(text())  # web-feed-canary is neither routed nor declared
    assert (
        "versions.web-feed.clusters.canary: cluster 'web-feed-canary' is neither routed to "
        "nor declared under cluster.loadbalancer" in message
    )
    cfg(text())  # declared: fine
    # Without egress the old rule holds: a version cluster must be routed to.
    no_egress = text().split("egress:")[0].replace("    web-feed-go: {}\n", "")
    assert "cluster 'web-feed-perl' is not routed to by any route" in errors(no_egress)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            text().replace("services: [web-feed]", "services: [web-fed]"),
            "egress.services[0]: 'web-fed' is not a service under versions",
        ),
        (
            text().replace("services: [web-feed]", "services: [web-feed, web-feed]"),
            "egress.services: lists the same service twice",
        ),
        (text().replace("services: [web-feed]", "services: []"), "egress.services:"),
        (
            text().replace("listen: {port: 8001}", "listen: {port: 8000}"),
            "egress.listen.port: port 8000 is the ingress listener's",
        ),
        (text().replace("listen: {port: 8001}", "listn: {port: 8001}"), "egress.listn:"),
        (
            text().replace("listen: {port: 8001}", "listen: {port: 8001, address: here}"),
            "egress.listen.address: must be an IP address",
        ),
    ],
)
def test_bad_egress_sections_are_named_by_path(doc: str, expected: str) -> None:
    doc = doc.replace("    web-feed-go: {}\n", "    web-feed-go: {}\n    web-feed-canary: {}\n", 1)
    assert expected in errors(doc)


def test_egress_listener_and_routes() -> None:
    snap = translate(cfg(text()), Catalog())
    assert check_snapshot(snap) == []
    listener = the(snap, LISTENER, EGRESS_LISTENER)
    assert isinstance(listener, listener_pb2.Listener)
    sock = listener.address.socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.1", 8001)  # loopback by default
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == EGRESS_ROUTES
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]  # no ext_proc
    routes = the(snap, ROUTE, EGRESS_ROUTES)
    assert isinstance(routes, route_pb2.RouteConfiguration)
    (vh,) = routes.virtual_hosts
    assert list(vh.domains) == ["web-feed", "web-feed:8001"]
    assert [(r.name, r.route.cluster) for r in vh.routes] == [
        ("web-feed@canary", "web-feed-canary"),
        ("web-feed@go", "web-feed-go"),
        ("web-feed@default", "web-feed-perl"),
    ]
    go = vh.routes[1]
    (matcher,) = go.match.headers
    assert (matcher.name, matcher.string_match.exact) == ("x-junction-version", "go")
    assert not vh.routes[2].match.headers and vh.routes[2].match.prefix == "/"
    assert not any(r.request_headers_to_remove for r in vh.routes)  # kept for the next hop


def test_the_header_is_the_callees_pin_propagate() -> None:
    doc = text().replace(
        "clusters: {perl: web-feed-perl, go: web-feed-go, canary: web-feed-canary}",
        "clusters: {perl: web-feed-perl, go: web-feed-go, canary: web-feed-canary}\n"
        "    pin: {header: x-feed-pin, trust: any, propagate: x-release}",
    )
    routes = the(translate(cfg(doc), Catalog()), ROUTE, EGRESS_ROUTES)
    assert isinstance(routes, route_pb2.RouteConfiguration)
    assert routes.virtual_hosts[0].routes[0].match.headers[0].name == "x-release"


def test_ingress_strips_egress_headers_where_nothing_decides() -> None:
    # No decisions at all (no pin, no canary): every ingress route strips the header.
    ingress = the(translate(cfg(text()), Catalog()), ROUTE, ROUTE_CONFIG_NAME)
    assert isinstance(ingress, route_pb2.RouteConfiguration)
    for route in ingress.virtual_hosts[0].routes:
        assert list(route.request_headers_to_remove) == ["x-junction-version"], route.name
    # web-api pinned natively (trust: any): its pin routes overwrite the header with the
    # pinned version themselves; its plain route and /asset strip it (once).
    pinned = cfg(text(pin="pin: {header: x-junction-version, trust: any}"))
    ingress = the(translate(pinned, Catalog()), ROUTE, ROUTE_CONFIG_NAME)
    assert isinstance(ingress, route_pb2.RouteConfiguration)
    stripped = {r.name: list(r.request_headers_to_remove) for r in ingress.virtual_hosts[0].routes}
    assert stripped["/asset"] == ["x-junction-version"]
    assert stripped["/api"] == ["x-junction-version"]
    assert stripped["/api#pin=go"] == [] and stripped["/api#pin=perl"] == []
    # Through the decision service (cookie pins): its version routes keep the header it
    # set; the plain route (no decision, or the service failed open) strips it.
    served = cfg(text(pin="pin: {header: x-junction-version, cookie: jv, trust: any}"))
    ingress = the(translate(served, Catalog()), ROUTE, ROUTE_CONFIG_NAME)
    assert isinstance(ingress, route_pb2.RouteConfiguration)
    stripped = {r.name: list(r.request_headers_to_remove) for r in ingress.virtual_hosts[0].routes}
    assert stripped["/api"] == ["x-junction-version"]
    assert stripped["/api@web-api-go"] == [] and stripped["/api@web-api-perl"] == []
    # A propagate header other than the egress one is never protected from the strip.
    other = cfg(text(pin="pin: {header: x-junction-version, trust: any, propagate: x-rel}"))
    ingress = the(translate(other, Catalog()), ROUTE, ROUTE_CONFIG_NAME)
    assert isinstance(ingress, route_pb2.RouteConfiguration)
    for route in ingress.virtual_hosts[0].routes:
        assert "x-junction-version" in route.request_headers_to_remove, route.name
    # Without egress nothing is added (the ingress routes are exactly as before).
    plain = the(translate(cfg(without_egress(text())), Catalog()), ROUTE, ROUTE_CONFIG_NAME)
    assert isinstance(plain, route_pb2.RouteConfiguration)
    assert not any(r.request_headers_to_remove for r in plain.virtual_hosts[0].routes)


def test_incremental_translation_matches_and_envoy_accepts() -> None:
    config = cfg(text())
    catalog = Catalog({"web-feed-go": (Instance("127.0.0.1", 9000),)})
    snap = translate(config, catalog)
    assert IncrementalTranslator().translate(config, catalog).version == snap.version
    envoy_validate(snap)


def test_no_egress_section_no_egress_resources() -> None:
    snap = translate(cfg(without_egress(text())), Catalog())
    assert EGRESS_LISTENER not in snap.of_type(LISTENER)
    assert EGRESS_ROUTES not in snap.of_type(ROUTE)


def test_make_runs_chain_example_is_the_seed_plus_the_chain() -> None:
    """examples/chain.yaml (what `make run` serves) keeps the seed deployment as it is."""
    root = Path(__file__).resolve().parents[2] / "examples"
    seed = load_config((root / "seed.yaml").read_text(), "seed.yaml")
    chain = load_config((root / "chain.yaml").read_text(), "chain.yaml")
    assert chain.listener == seed.listener and chain.route == seed.route
    assert chain.endpoint == seed.endpoint and chain.decision == seed.decision
    for name, lb in seed.cluster.loadbalancer.items():
        assert chain.cluster.loadbalancer[name] == lb
    assert chain.versions["web-api"] == seed.versions["web-api"]
    assert chain.egress is not None and chain.egress.services == ("web-feed",)
    assert set(chain.cluster.loadbalancer) - set(seed.cluster.loadbalancer) == {
        "web-feed-perl",
        "web-feed-go",
    }
    envoy_validate(translate(chain, Catalog()))
