"""The real Envoy (``--mode validate``) accepts what Junction generates, and rejects what it
must. Validate mode parses and builds the whole config without binding ports or
connecting anywhere; each run is one short-lived Envoy process (subprocess.run with a
timeout, so nothing outlives the test)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2

from junction.catalog.file import load_instances
from junction.catalog.model import Catalog, Health, Instance
from junction.config.load import load_config
from junction.xds.bootstrap import BootstrapOptions, bootstrap
from junction.xds.names import ALS_CLUSTER, EXTPROC_CLUSTER, ROUTE_CONFIG_NAME
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from junction.xds.translate import TranslateOptions, http_filter, pack, translate
from junction.xds.validate import (
    EnvoyValidationError,
    check_snapshot,
    envoy_validate,
    validate_bootstrap,
)

ROOT = Path(__file__).resolve().parents[2]


def seed_snapshot(options: TranslateOptions | None = None) -> Snapshot:
    config = load_config((ROOT / "examples" / "seed.yaml").read_text(), "seed.yaml")
    path = ROOT / "tests" / "golden" / "seed-instances.yaml"
    catalog = Catalog(load_instances(path.read_text(), str(path)))
    if options is None:
        return translate(config, catalog)
    return translate(config, catalog, options=options)


def boot(**kw: object) -> dict[str, object]:
    return bootstrap(BootstrapOptions(node_id="validate", xds_port=18000, admin_port=0, **kw))  # type: ignore[arg-type]


# Every feature of the config format at once: every lb policy, locality weighting with
# each of them, tcp and http checks with ranges, several virtual hosts, a weight-0 member,
# a port override, a cluster with no instances, fractional timeouts.
KITCHEN_SINK = """
listener:
  listen: {address: 0.0.0.0, port: 8080}
  timeout: {connect: 0.25, idle: 30.5, request: 2}
route:
  - domain: ["example.com", "*.example.com"]
    host-header: "www.example.com"
    cluster:
      rr:      {prefix: ["/", "/rr"], weight: 60}
      lr:      {prefix: ["/"], weight: 40}
      rnd:     {prefix: ["/api/foobar"], weight: 0}
      ring:    {prefix: ["/api/foobar"], weight: 100}
  - domain: ["qa.internal"]
    cluster:
      mag:     {prefix: ["/"]}
      empty:   {prefix: ["/empty"]}
cluster:
  loadbalancer:
    rr: {lb-policy: round-robin}
    lr:
      lb-policy: least-request
      health-check: {type: tcp, timeout: 0.5, interval: 2, healthy: 1, unhealthy: 2}
    rnd: {lb-policy: random}
    ring:
      lb-policy: ring-hash
      health-check: {type: http, value: /hc, expected: ["200-299", 304], timeout: 1,
                     interval: 1, healthy: 2, unhealthy: 3}
    mag: {lb-policy: maglev}
endpoint:
  eds:
    rr: {balancing-policy: locality}
    lr: {balancing-policy: locality, port: 80}
    ring: {balancing-policy: locality}
    mag: {balancing-policy: locality}
"""


def kitchen_sink() -> Snapshot:
    config = load_config(textwrap.dedent(KITCHEN_SINK), "kitchen-sink.yaml")
    health = list(Health)
    services = {}
    for s, name in enumerate(["rr", "lr", "rnd", "ring", "mag"]):
        services[name] = tuple(
            Instance(
                f"10.{s}.{i % 3}.{i + 1}",
                8000 + i,
                zone=f"zone-{i % 3}",
                region="r1" if i < 4 else "r2",
                health=health[i % len(health)],
                weight=1 + i,
            )
            for i in range(6)
        )
    return translate(config, Catalog(services))


def test_seed_snapshot_is_valid_for_envoy() -> None:
    snap = seed_snapshot()
    assert check_snapshot(snap) == []
    envoy_validate(snap)


def test_seed_snapshot_with_the_bootstrap_is_valid_for_envoy() -> None:
    envoy_validate(seed_snapshot(), boot())


@pytest.mark.parametrize("delta", [False, True])
def test_generated_bootstrap_alone_is_valid_for_envoy(delta: bool) -> None:
    validate_bootstrap(boot(delta=delta, zone="zone-a", region="r1"))


def test_bootstrap_without_optional_clusters_and_with_a_dns_xds_host_is_valid() -> None:
    validate_bootstrap(boot(als_port=None, extproc_port=None, xds_host="localhost"))


def test_every_config_feature_is_valid_for_envoy() -> None:
    snap = kitchen_sink()
    assert check_snapshot(snap) == []
    envoy_validate(snap, boot())


def test_extension_points_ext_proc_lua_and_grpc_access_log_are_valid_for_envoy() -> None:
    """The shapes later features plug in: filters before the router, HCM access logs."""
    ext_proc = http_filter(
        "envoy.filters.http.ext_proc",
        ext_proc_pb2.ExternalProcessor(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=EXTPROC_CLUSTER)
            )
        ),
    )
    lua = http_filter(
        "envoy.filters.http.lua",
        lua_pb2.Lua(default_source_code={"inline_string": "function envoy_on_request(h) end"}),
    )
    als = accesslog_pb2.AccessLog(
        name="envoy.access_loggers.http_grpc",
        typed_config=pack(
            als_pb2.HttpGrpcAccessLogConfig(
                common_config=als_pb2.CommonGrpcAccessLogConfig(
                    log_name="junction",
                    transport_api_version=config_source_pb2.V3,
                    grpc_service=grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=ALS_CLUSTER)
                    ),
                )
            )
        ),
    )
    opts = TranslateOptions(extra_http_filters=(ext_proc, lua), access_log=(als,))
    envoy_validate(seed_snapshot(opts), boot())


def test_envoy_rejects_a_route_to_a_missing_cluster() -> None:
    """The negative control: validation really runs, and its output reaches the error."""
    snap = seed_snapshot()
    rc = route_pb2.RouteConfiguration()
    rc.CopyFrom(snap.of_type(ROUTE)[ROUTE_CONFIG_NAME].message)
    rc.virtual_hosts[0].routes[0].route.cluster = "no-such-cluster"
    bad = Snapshot.build(
        {
            **{t: [(n, r.message) for n, r in snap.of_type(t).items()]
               for t in (CLUSTER, ENDPOINT, LISTENER)},
            ROUTE: [(ROUTE_CONFIG_NAME, rc)],
        }
    )  # fmt: skip
    assert any("no-such-cluster" in p for p in check_snapshot(bad))
    with pytest.raises(EnvoyValidationError) as info:
        envoy_validate(bad)
    assert info.value.returncode not in (None, 0)
    assert "no-such-cluster" in info.value.output

