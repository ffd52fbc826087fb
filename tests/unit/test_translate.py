"""Translation (config + instances -> Envoy v3 resources), rendering and snapshot checks.

Golden file: tests/golden/seed.json is ``render_json`` of examples/seed.yaml with
tests/golden/seed-instances.yaml. Regenerate after an intended change with
``JUNCTION_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_translate.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from junction.catalog.file import load_instances
from junction.catalog.model import Catalog, Health, Instance
from junction.config.load import load_config
from junction.config.model import Config
from junction.xds.names import LISTENER_NAME, ROUTE_CONFIG_NAME, XDS_CLUSTER
from junction.xds.render import render, render_json
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from junction.xds.translate import (
    ROUTER_FILTER,
    TranslateOptions,
    http_filter,
    translate,
)
from junction.xds.translate_extproc import EXTPROC_FILTER
from junction.xds.validate import check_snapshot

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
SEED = ROOT / "examples" / "seed.yaml"


# ---- helpers ---------------------------------------------------------------------------


def config(text: str) -> Config:
    return load_config(textwrap.dedent(text), "test.yaml")


def seed() -> Config:
    return load_config(SEED.read_text(), str(SEED))


def seed_catalog() -> Catalog:
    path = GOLDEN / "seed-instances.yaml"
    return Catalog(load_instances(path.read_text(), str(path)))


MINIMAL = """
listener:
  listen: {address: 0.0.0.0, port: 8080}
route:
  domain: ["a.example"]
  cluster:
    svc: {prefix: ["/"]}
"""


def with_cluster(extra: str, *, endpoint: str = "") -> Config:
    """MINIMAL plus a ``cluster.loadbalancer.svc`` body (and an ``endpoint.eds.svc`` body)."""
    text = MINIMAL + "cluster:\n  loadbalancer:\n    svc:\n" + textwrap.indent(
        textwrap.dedent(extra), "      "
    )
    if endpoint:
        text += "endpoint:\n  eds:\n    svc:\n" + textwrap.indent(
            textwrap.dedent(endpoint), "      "
        )
    return config(text)


def the_cluster(snap: Snapshot, name: str = "svc") -> cluster_pb2.Cluster:
    msg = snap.of_type(CLUSTER)[name].message
    assert isinstance(msg, cluster_pb2.Cluster)
    return msg


def the_cla(snap: Snapshot, name: str = "svc") -> endpoint_pb2.ClusterLoadAssignment:
    msg = snap.of_type(ENDPOINT)[name].message
    assert isinstance(msg, endpoint_pb2.ClusterLoadAssignment)
    return msg


def the_routes(snap: Snapshot) -> route_pb2.RouteConfiguration:
    msg = snap.of_type(ROUTE)[ROUTE_CONFIG_NAME].message
    assert isinstance(msg, route_pb2.RouteConfiguration)
    return msg


def the_hcm(snap: Snapshot) -> hcm_pb2.HttpConnectionManager:
    listener = snap.of_type(LISTENER)[LISTENER_NAME].message
    assert isinstance(listener, listener_pb2.Listener)
    (chain,) = listener.filter_chains
    (f,) = chain.filters
    hcm = hcm_pb2.HttpConnectionManager()
    assert f.typed_config.Unpack(hcm)
    return hcm


def all_routes(snap: Snapshot) -> list[route_components_pb2.Route]:
    return [r for vh in the_routes(snap).virtual_hosts for r in vh.routes]


def seconds(d: object) -> float:
    return d.seconds + d.nanos / 1e9  # type: ignore[attr-defined, no-any-return]


# ---- golden ----------------------------------------------------------------------------


def test_seed_matches_golden_file() -> None:
    got = render_json(translate(seed(), seed_catalog()))
    golden = GOLDEN / "seed.json"
    if os.environ.get("JUNCTION_UPDATE_GOLDEN") == "1":
        golden.write_text(got)
    assert golden.exists(), "no golden file: run with JUNCTION_UPDATE_GOLDEN=1 and review it"
    # Compare parsed JSON first for a readable diff, then the text for exactness.
    assert json.loads(got) == json.loads(golden.read_text())
    assert got == golden.read_text()


def test_seed_snapshot_is_consistent() -> None:
    snap = translate(seed(), seed_catalog(), origin="seed.yaml", config_version="abc")
    assert check_snapshot(snap) == []
    assert snap.origin == "seed.yaml"
    assert snap.config_version == "abc"
    assert snap.counts() == {
        "Cluster": 3,
        "ClusterLoadAssignment": 3,
        "Listener": 1,
        "RouteConfiguration": 1,
    }


def test_render_shape_names_and_order() -> None:
    out = render(translate(seed(), seed_catalog()))
    assert list(out) == ["listeners", "routes", "clusters", "endpoints"]
    assert [c["name"] for c in out["clusters"]] == ["web-api-go", "web-api-perl", "web-asset"]
    assert [e["clusterName"] for e in out["endpoints"]] == [
        "web-api-go",
        "web-api-perl",
        "web-asset",
    ]
    assert out["listeners"][0]["name"] == LISTENER_NAME
    # proto3 JSON names (camelCase), not proto field names
    assert "edsClusterConfig" in out["clusters"][0]
    assert "eds_cluster_config" not in out["clusters"][0]


# ---- listener --------------------------------------------------------------------------


def test_listener_address_and_rds_over_ads() -> None:
    snap = translate(seed(), Catalog())
    listener = snap.of_type(LISTENER)[LISTENER_NAME].message
    assert listener.address.socket_address.address == "127.0.0.1"
    assert listener.address.socket_address.port_value == 8000
    hcm = the_hcm(snap)
    assert hcm.codec_type == hcm_pb2.HttpConnectionManager.AUTO
    assert hcm.rds.route_config_name == ROUTE_CONFIG_NAME
    assert hcm.rds.config_source.HasField("ads")
    assert hcm.rds.config_source.resource_api_version == 2  # V3
    # The seed's web-api versions add the decision service's filter (translate_extproc).
    assert [f.name for f in hcm.http_filters] == [EXTPROC_FILTER, ROUTER_FILTER]


def test_extra_filters_go_before_the_router_and_access_logs_are_kept() -> None:
    lua = http_filter(
        "envoy.filters.http.lua",
        lua_pb2.Lua(default_source_code={"inline_string": "function envoy_on_request(h) end"}),
    )
    marker = hcm_pb2.HttpFilter(name="second")
    log = accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc")
    opts = TranslateOptions(extra_http_filters=(lua, marker), access_log=(log,))
    hcm = the_hcm(translate(seed(), Catalog(), options=opts))
    assert [f.name for f in hcm.http_filters] == [
        "envoy.filters.http.lua",
        "second",
        EXTPROC_FILTER,
        ROUTER_FILTER,
    ]
    assert [a.name for a in hcm.access_log] == ["envoy.access_loggers.http_grpc"]
    # Options are part of the content: a snapshot with filters has another version.
    assert translate(seed(), Catalog(), options=opts).version != translate(seed(), Catalog()).version


# ---- routes ----------------------------------------------------------------------------


def test_shared_prefix_becomes_weighted_clusters_with_relative_weights() -> None:
    routes = {r.match.prefix: r.route for r in all_routes(translate(seed(), Catalog()))}
    api = routes["/api"]
    assert api.WhichOneof("cluster_specifier") == "weighted_clusters"
    assert [(c.name, c.weight.value) for c in api.weighted_clusters.clusters] == [
        ("web-api-go", 10),
        ("web-api-perl", 90),
    ]
    assert not api.weighted_clusters.HasField("total_weight")  # deprecated; Envoy sums
    asset = routes["/asset"]
    assert asset.WhichOneof("cluster_specifier") == "cluster"
    assert asset.cluster == "web-asset"


def test_single_cluster_with_partial_weight_takes_all_traffic_and_zero_weight_is_kept() -> None:
    cfg = config(
        """
        listener:
          listen: {port: 8080}
        route:
          domain: ["a.example"]
          cluster:
            old: {prefix: ["/x"], weight: 100}
            new: {prefix: ["/x"], weight: 0}
            solo: {prefix: ["/y"], weight: 30}
        """
    )
    routes = {r.match.prefix: r.route for r in all_routes(translate(cfg, Catalog()))}
    assert routes["/y"].cluster == "solo"
    assert [(c.name, c.weight.value) for c in routes["/x"].weighted_clusters.clusters] == [
        ("new", 0),
        ("old", 100),
    ]


def test_longest_prefix_first() -> None:
    cfg = config(
        """
        listener:
          listen: {port: 8080}
        route:
          domain: ["a.example"]
          cluster:
            root: {prefix: ["/"]}
            api: {prefix: ["/api", "/b"]}
            hot: {prefix: ["/api/foobar"]}
            assets: {prefix: ["/asset"]}
        """
    )
    got = [(r.match.prefix, r.route.cluster, r.name) for r in all_routes(translate(cfg, Catalog()))]
    assert got == [
        ("/api/foobar", "hot", "/api/foobar"),
        ("/asset", "assets", "/asset"),
        ("/api", "api", "/api"),
        ("/b", "api", "/b"),
        ("/", "root", "/"),
    ]


def test_virtual_hosts_one_per_route_block_with_their_domains() -> None:
    cfg = config(
        """
        listener:
          listen: {port: 8080}
        route:
          - domain: ["qa1.example", "www.qa1.example"]
            host-header: "qa1.internal"
            cluster:
              app-qa1: {prefix: ["/"]}
          - domain: ["qa2.example"]
            cluster:
              app-qa2: {prefix: ["/"]}
        """
    )
    rc = the_routes(translate(cfg, Catalog()))
    assert [(vh.name, list(vh.domains)) for vh in rc.virtual_hosts] == [
        ("qa1.example", ["qa1.example", "www.qa1.example"]),
        ("qa2.example", ["qa2.example"]),
    ]
    assert rc.ignore_port_in_host_matching
    # validate_clusters keeps its default (unset); see the translate module docstring.
    assert not rc.HasField("validate_clusters")


def test_host_header_rewrites_host_on_every_route_of_its_block_only() -> None:
    cfg = config(
        """
        listener:
          listen: {port: 8080}
        route:
          - domain: ["qa1.example"]
            host-header: "www.example.com"
            cluster:
              a: {prefix: ["/", "/x"]}
          - domain: ["qa2.example"]
            cluster:
              b: {prefix: ["/"]}
        """
    )
    rc = the_routes(translate(cfg, Catalog()))
    qa1, qa2 = rc.virtual_hosts
    assert [r.route.host_rewrite_literal for r in qa1.routes] == ["www.example.com"] * 2
    assert [r.route.WhichOneof("host_rewrite_specifier") for r in qa2.routes] == [None]


# ---- timeouts --------------------------------------------------------------------------


def test_timeouts_map_to_hcm_routes_and_clusters() -> None:
    cfg = config(
        """
        listener:
          listen: {port: 8080}
          timeout: {connect: 0.25, idle: 90, request: 2.5}
        route:
          domain: ["a.example"]
          cluster:
            a: {prefix: ["/a"]}
            b: {prefix: ["/b"]}
        """
    )
    snap = translate(cfg, Catalog())
    assert seconds(the_hcm(snap).common_http_protocol_options.idle_timeout) == 90
    assert [seconds(r.route.timeout) for r in all_routes(snap)] == [2.5, 2.5]
    assert [seconds(c.message.connect_timeout) for c in snap.of_type(CLUSTER).values()] == [
        0.25,
        0.25,
    ]


def test_absent_timeouts_use_envoy_defaults_and_1s_connect() -> None:
    snap = translate(config(MINIMAL), Catalog())
    assert not the_hcm(snap).HasField("common_http_protocol_options")
    assert [r.route.HasField("timeout") for r in all_routes(snap)] == [False]
    assert seconds(the_cluster(snap).connect_timeout) == 1.0


# ---- clusters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("round-robin", cluster_pb2.Cluster.ROUND_ROBIN),
        ("least-request", cluster_pb2.Cluster.LEAST_REQUEST),
        ("random", cluster_pb2.Cluster.RANDOM),
        ("ring-hash", cluster_pb2.Cluster.RING_HASH),
        ("maglev", cluster_pb2.Cluster.MAGLEV),
    ],
)
def test_lb_policy(policy: str, expected: int) -> None:
    snap = translate(with_cluster(f"lb-policy: {policy}\n"), Catalog())
    assert the_cluster(snap).lb_policy == expected


def test_cluster_is_eds_over_ads_named_by_its_service() -> None:
    cluster = the_cluster(translate(config(MINIMAL), Catalog()))
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.eds_cluster_config.service_name == "svc"
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.eds_cluster_config.eds_config.resource_api_version == 2  # V3
    assert list(cluster.health_checks) == []
    assert not cluster.ignore_health_on_host_removal
    assert not cluster.HasField("common_lb_config")


def test_http_health_check_exactly_as_configured() -> None:
    snap = translate(
        with_cluster(
            """
            health-check:
              type: http
              host: www.example.com
              value: /health_check
              expected: ["200", "300-304", 418]
              timeout: 3
              interval: 1.5
              healthy: 3
              unhealthy: 4
            """
        ),
        Catalog(),
    )
    cluster = the_cluster(snap)
    (hc,) = cluster.health_checks
    assert seconds(hc.timeout) == 3
    assert seconds(hc.interval) == 1.5
    assert seconds(hc.no_traffic_interval) == 1.5
    assert hc.healthy_threshold.value == 3
    assert hc.unhealthy_threshold.value == 4
    assert hc.WhichOneof("health_checker") == "http_health_check"
    assert hc.http_health_check.host == "www.example.com"
    assert hc.http_health_check.path == "/health_check"
    assert [(r.start, r.end) for r in hc.http_health_check.expected_statuses] == [
        (200, 201),
        (300, 305),
        (418, 419),
    ]
    assert cluster.ignore_health_on_host_removal
    assert not cluster.close_connections_on_host_health_failure


def test_http_health_check_without_host_leaves_it_to_envoy() -> None:
    snap = translate(
        with_cluster("health-check: {timeout: 1, interval: 2, healthy: 1, unhealthy: 1}\n"),
        Catalog(),
    )
    (hc,) = the_cluster(snap).health_checks
    assert hc.http_health_check.host == ""
    assert hc.http_health_check.path == "/"
    assert [(r.start, r.end) for r in hc.http_health_check.expected_statuses] == [(200, 201)]


def test_tcp_health_check() -> None:
    snap = translate(
        with_cluster(
            "health-check: {type: tcp, timeout: 2, interval: 5, healthy: 2, unhealthy: 3}\n"
        ),
        Catalog(),
    )
    (hc,) = the_cluster(snap).health_checks
    assert hc.WhichOneof("health_checker") == "tcp_health_check"
    assert not hc.tcp_health_check.HasField("send")
    assert (seconds(hc.timeout), seconds(hc.interval)) == (2, 5)
    assert (hc.healthy_threshold.value, hc.unhealthy_threshold.value) == (2, 3)


# ---- endpoints -------------------------------------------------------------------------


def test_cluster_without_instances_gets_an_empty_assignment() -> None:
    cla = the_cla(translate(config(MINIMAL), Catalog()))
    assert cla.cluster_name == "svc"
    assert list(cla.endpoints) == []


@pytest.mark.parametrize(
    ("health", "status"),
    [
        (Health.HEALTHY, health_check_pb2.HEALTHY),
        (Health.DEGRADED, health_check_pb2.DEGRADED),
        (Health.UNHEALTHY, health_check_pb2.UNHEALTHY),
        (Health.DRAINING, health_check_pb2.DRAINING),
    ],
)
def test_health_mapping(health: Health, status: int) -> None:
    cat = Catalog({"svc": (Instance("10.0.0.1", 80, health=health),)})
    cla = the_cla(translate(config(MINIMAL), cat))
    (ep,) = cla.endpoints[0].lb_endpoints
    assert ep.health_status == status


def test_endpoints_grouped_by_locality_sorted_with_instance_weights() -> None:
    cat = Catalog(
        {
            "svc": (
                Instance("10.0.2.1", 81, zone="b", region="r1", weight=3),
                Instance("10.0.1.2", 80, zone="a", region="r1"),
                Instance("10.0.1.1", 80, zone="a", region="r1", weight=2),
                Instance("10.9.0.1", 80, zone="a", region="r2"),
                Instance("10.8.0.1", 80),
            )
        }
    )
    cla = the_cla(translate(config(MINIMAL), cat))
    got = [
        (
            (loc.locality.region, loc.locality.zone),
            [
                (e.endpoint.address.socket_address.address,
                 e.endpoint.address.socket_address.port_value,
                 e.load_balancing_weight.value)
                for e in loc.lb_endpoints
            ],
        )
        for loc in cla.endpoints
    ]  # fmt: skip
    assert got == [
        (("", ""), [("10.8.0.1", 80, 1)]),
        (("r1", "a"), [("10.0.1.1", 80, 2), ("10.0.1.2", 80, 1)]),
        (("r1", "b"), [("10.0.2.1", 81, 3)]),
        (("r2", "a"), [("10.9.0.1", 80, 1)]),
    ]
    # Without balancing-policy: locality, localities carry no weight.
    assert [loc.HasField("load_balancing_weight") for loc in cla.endpoints] == [False] * 4
    assert not cla.endpoints[0].HasField("locality")


def test_locality_balancing_weights_each_locality_by_its_instances() -> None:
    cfg = with_cluster("lb-policy: round-robin\n", endpoint="balancing-policy: locality\n")
    cat = Catalog(
        {
            "svc": (
                Instance("10.0.1.1", 80, zone="a", weight=2),
                Instance("10.0.1.2", 80, zone="a", weight=5, health=Health.UNHEALTHY),
                Instance("10.0.2.1", 80, zone="b"),
            )
        }
    )
    snap = translate(cfg, cat)
    assert the_cluster(snap).common_lb_config.HasField("locality_weighted_lb_config")
    cla = the_cla(snap)
    assert [(loc.locality.zone, loc.load_balancing_weight.value) for loc in cla.endpoints] == [
        ("a", 7),
        ("b", 1),
    ]
    assert check_snapshot(snap) == []


def test_eds_port_overrides_every_instance_port_and_dedupes() -> None:
    cfg = with_cluster("lb-policy: random\n", endpoint="port: 80\n")
    cat = Catalog(
        {
            "svc": (
                Instance("10.0.0.1", 18080, health=Health.UNHEALTHY),
                Instance("10.0.0.1", 18081, health=Health.HEALTHY),
                Instance("10.0.0.2", 18082),
            )
        }
    )
    cla = the_cla(translate(cfg, cat))
    got = [
        (e.endpoint.address.socket_address.address,
         e.endpoint.address.socket_address.port_value,
         e.health_status)
        for loc in cla.endpoints
        for e in loc.lb_endpoints
    ]  # fmt: skip
    # 10.0.0.1 had two instances that both become :80; the healthy one is kept.
    assert got == [("10.0.0.1", 80, health_check_pb2.HEALTHY), ("10.0.0.2", 80, health_check_pb2.HEALTHY)]


def test_instance_port_used_without_override() -> None:
    cat = Catalog({"svc": (Instance("10.0.0.1", 18080), Instance("10.0.0.1", 18081))})
    cla = the_cla(translate(config(MINIMAL), cat))
    ports = [e.endpoint.address.socket_address.port_value for e in cla.endpoints[0].lb_endpoints]
    assert ports == [18080, 18081]


def test_services_not_in_config_are_ignored() -> None:
    cat = Catalog({"svc": (Instance("10.0.0.1", 80),), "other": (Instance("10.0.0.2", 80),)})
    snap = translate(config(MINIMAL), cat)
    assert list(snap.of_type(CLUSTER)) == ["svc"]
    assert list(snap.of_type(ENDPOINT)) == ["svc"]


# ---- determinism -----------------------------------------------------------------------


def test_same_input_same_version() -> None:
    a = translate(seed(), seed_catalog())
    b = translate(seed(), seed_catalog())
    assert a.version == b.version
    assert render_json(a) == render_json(b)


def test_reordered_input_same_version() -> None:
    reordered = config(
        """
        endpoint:
          eds:
            web-api-perl: {balancing-policy: locality, protocol: tcp}
        cluster:
          loadbalancer:
            web-asset: {discovery: eds, lb-policy: random}
            web-api-go:
              health-check:
                unhealthy: 2
                healthy: 1
                interval: 1
                timeout: 3
                expected: ["200"]
                value: /health_check
                host: www.example.com
                type: http
              discovery: eds
              lb-policy: least-request
            web-api-perl:
              health-check: {type: http, host: www.example.com, value: /health_check,
                             expected: ["200"], timeout: 3, interval: 1, healthy: 3,
                             unhealthy: 4}
              lb-policy: round-robin
        route:
          cluster:
            web-asset:    {weight: 100, prefix: ["/asset"]}
            web-api-go:   {prefix: ["/api"], weight: 10}
            web-api-perl: {prefix: ["/api"], weight: 90}
          host-header: "www.example.com"
          domain: ["example.com", "www.example.com"]
        listener:
          timeout: {request: 15, idle: 60, connect: 1}
          listen: {port: 8000, address: 127.0.0.1, protocol: tcp}
        versions:
          web-api:
            canary: {key: {header: x-user-id}, weight: 10, version: go}
            pin: {trust: any, header: x-junction-version}
            clusters: {go: web-api-go, perl: web-api-perl}
            default: perl
        """
    )
    services = dict(seed_catalog().services)
    shuffled = Catalog(
        {name: tuple(reversed(services[name])) for name in reversed(list(services))}
    )
    assert translate(reordered, shuffled).version == translate(seed(), seed_catalog()).version


def test_any_change_changes_the_version() -> None:
    base = translate(seed(), seed_catalog())
    cat = seed_catalog().replace("web-asset", [Instance("10.0.1.31", 8081, zone="zone-a",
                                                        region="r1", health=Health.DEGRADED)])
    changed = translate(seed(), cat)
    assert changed.version != base.version
    # Only the endpoints changed: the other types keep their versions (what delta xDS needs).
    assert changed.versions[ENDPOINT] != base.versions[ENDPOINT]
    assert {t: changed.versions[t] for t in (CLUSTER, LISTENER, ROUTE)} == {
        t: base.versions[t] for t in (CLUSTER, LISTENER, ROUTE)
    }


# ---- check_snapshot --------------------------------------------------------------------


def _hand_built(
    *,
    route_clusters: tuple[str, ...] = ("svc",),
    clusters: tuple[str, ...] = ("svc",),
    assignments: tuple[str, ...] = ("svc",),
    rds_name: str = ROUTE_CONFIG_NAME,
    endpoint_address: str = "10.0.0.1",
) -> Snapshot:
    """A small snapshot made by hand (translation never produces a bad one)."""
    base = translate(config(MINIMAL), Catalog({"svc": (Instance("10.0.0.1", 80),)}))
    cluster_template = the_cluster(base)
    by_type: dict[str, list[tuple[str, object]]] = {CLUSTER: [], ENDPOINT: [], LISTENER: [],
                                                    ROUTE: []}
    for name in clusters:
        c = cluster_pb2.Cluster()
        c.CopyFrom(cluster_template)
        c.name = name
        c.eds_cluster_config.service_name = name
        by_type[CLUSTER].append((name, c))
    for name in assignments:
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        ep = cla.endpoints.add().lb_endpoints.add()
        ep.endpoint.address.socket_address.address = endpoint_address
        ep.endpoint.address.socket_address.port_value = 80
        by_type[ENDPOINT].append((name, cla))
    rc = route_pb2.RouteConfiguration(name=ROUTE_CONFIG_NAME)
    vh = rc.virtual_hosts.add(name="vh", domains=["a.example"])
    for i, name in enumerate(route_clusters):
        route = vh.routes.add(name=f"/r{i}")
        route.match.prefix = f"/r{i}"
        route.route.cluster = name
    by_type[ROUTE].append((ROUTE_CONFIG_NAME, rc))
    listener = listener_pb2.Listener()
    listener.CopyFrom(base.of_type(LISTENER)[LISTENER_NAME].message)
    hcm = the_hcm(base)
    hcm.rds.route_config_name = rds_name
    listener.filter_chains[0].filters[0].typed_config.Pack(hcm, deterministic=True)
    by_type[LISTENER].append((LISTENER_NAME, listener))
    return Snapshot.build(by_type)


def test_hand_built_good_snapshot_passes() -> None:
    assert check_snapshot(_hand_built()) == []


def test_check_finds_a_route_to_a_missing_cluster() -> None:
    problems = check_snapshot(_hand_built(route_clusters=("svc", "ghost")))
    assert len(problems) == 1
    assert "'ghost' is not in CDS" in problems[0]
    assert "'vh'" in problems[0]


def test_check_finds_a_weighted_member_missing_and_zero_weights() -> None:
    snap = _hand_built()
    rc = route_pb2.RouteConfiguration()
    rc.CopyFrom(snap.of_type(ROUTE)[ROUTE_CONFIG_NAME].message)
    action = rc.virtual_hosts[0].routes[0].route
    action.ClearField("cluster")
    action.weighted_clusters.clusters.add(name="svc").weight.value = 0
    action.weighted_clusters.clusters.add(name="gone").weight.value = 0
    bad = Snapshot.build(
        {
            **{t: [(n, r.message) for n, r in snap.of_type(t).items()] for t in (CLUSTER,
                                                                                 ENDPOINT,
                                                                                 LISTENER)},
            ROUTE: [(ROUTE_CONFIG_NAME, rc)],
        }
    )
    problems = check_snapshot(bad)
    assert any("'gone' is not in CDS" in p for p in problems)
    assert any("weights sum to 0" in p for p in problems)


def test_check_finds_eds_cluster_without_assignment_and_orphan_assignment() -> None:
    problems = check_snapshot(_hand_built(assignments=("other",)))
    assert any("Cluster 'svc': no ClusterLoadAssignment named 'svc'" in p for p in problems)
    assert any("ClusterLoadAssignment 'other': no EDS cluster uses it" in p for p in problems)


def test_check_finds_a_missing_route_configuration() -> None:
    problems = check_snapshot(_hand_built(rds_name="nope"))
    assert problems == ["Listener 'junction_http': route configuration 'nope' is not in RDS"]


def test_check_finds_a_name_mismatch_and_a_wrong_type() -> None:
    snap = _hand_built()
    cluster = snap.of_type(CLUSTER)["svc"].message
    bad = Snapshot.build(
        {
            CLUSTER: [("svc", cluster), ("alias", cluster)],
            ENDPOINT: [(n, r.message) for n, r in snap.of_type(ENDPOINT).items()],
            LISTENER: [(n, r.message) for n, r in snap.of_type(LISTENER).items()],
            ROUTE: [("junction_routes", cluster)],
        }
    )
    problems = check_snapshot(bad)
    assert "Cluster 'alias': the message is named 'svc'" in problems
    assert "RouteConfiguration 'junction_routes': is a Cluster" in problems


def test_check_finds_reserved_cluster_names_and_non_ip_endpoints() -> None:
    problems = check_snapshot(
        _hand_built(
            clusters=(XDS_CLUSTER,),
            assignments=(XDS_CLUSTER,),
            route_clusters=(XDS_CLUSTER,),
            endpoint_address="db.internal",
        )
    )
    assert any("reserved" in p and XDS_CLUSTER in p for p in problems)
    assert any("'db.internal' is not an IP" in p for p in problems)


def test_check_finds_a_payload_that_does_not_match_its_message() -> None:
    snap = _hand_built()
    res = snap.of_type(CLUSTER)["svc"]
    other = cluster_pb2.Cluster()
    other.CopyFrom(res.message)
    other.lb_policy = cluster_pb2.Cluster.MAGLEV
    # A Resource whose bytes were not produced from its message (a bug check_snapshot guards).
    forged = type(res)(res.name, other, res.payload, res.version)
    bad = Snapshot(
        {t: dict(snap.of_type(t)) for t in (ENDPOINT, LISTENER, ROUTE)} | {CLUSTER: {"svc": forged}}
    )
    assert check_snapshot(bad) == ["Cluster 'svc': payload and message differ"]


def test_translation_imports_no_io_packages() -> None:
    """STYLE.md: translation is pure; importing it must not pull in gRPC, Consul or asyncio."""
    code = (
        "import sys, junction.xds.translate, junction.xds.render, junction.xds.validate;"
        "print(sorted(m for m in ('grpc', 'consul', 'asyncio', 'aiohttp') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
