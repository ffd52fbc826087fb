"""The Envoy bootstrap generator (no Envoy here; tests/integration validates with Envoy).

Golden file: tests/golden/bootstrap.json; regenerate with
``JUNCTION_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_bootstrap.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from junction.errors import JunctionError
from junction.xds.bootstrap import (
    ALS_CLUSTER,
    EXTPROC_CLUSTER,
    EXTPROC_HTTP_CLUSTER,
    XDS_CLUSTER,
    BootstrapError,
    BootstrapOptions,
    bootstrap,
    bootstrap_message,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "bootstrap.json"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def opts(**kw: Any) -> BootstrapOptions:
    base: dict[str, Any] = {"node_id": "envoy-1", "xds_port": 18000, "admin_port": 9901}
    return BootstrapOptions(**(base | kw))


def clusters(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["staticResources"]["clusters"]}


def test_matches_golden_file() -> None:
    got = json.dumps(bootstrap(opts(zone="zone-a", region="r1")), indent=2) + "\n"
    if os.environ.get("JUNCTION_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(got)
    assert json.loads(got) == json.loads(GOLDEN.read_text())


def test_round_trips_through_the_bootstrap_proto() -> None:
    doc = bootstrap(opts())
    parsed = json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())
    assert parsed == bootstrap_message(opts())


def test_node_identity_and_locality() -> None:
    doc = bootstrap(opts(node_cluster="edge", zone="zone-a", region="r1"))
    assert doc["node"] == {
        "id": "envoy-1",
        "cluster": "edge",
        "locality": {"region": "r1", "zone": "zone-a"},
    }
    assert "locality" not in bootstrap(opts())["node"]


def test_admin_on_loopback() -> None:
    doc = bootstrap(opts(admin_port=0))
    assert doc["admin"]["address"]["socketAddress"]["address"] == "127.0.0.1"
    assert doc["admin"]["address"]["socketAddress"].get("portValue", 0) == 0


def test_three_static_http2_grpc_clusters_on_loopback() -> None:
    got = clusters(bootstrap(opts()))
    assert list(got) == [XDS_CLUSTER, ALS_CLUSTER, EXTPROC_CLUSTER, EXTPROC_HTTP_CLUSTER]
    del got[EXTPROC_HTTP_CLUSTER]  # HTTP/1.1: test_extproc_http_cluster_is_http1
    ports = {XDS_CLUSTER: 18000, ALS_CLUSTER: 9001, EXTPROC_CLUSTER: 9002}
    for name, cluster in got.items():
        assert cluster["type"] == "STATIC"
        assert cluster["connectTimeout"] == "1s"
        (locality,) = cluster["loadAssignment"]["endpoints"]
        (endpoint,) = locality["lbEndpoints"]
        sock = endpoint["endpoint"]["address"]["socketAddress"]
        assert (sock["address"], sock["portValue"]) == ("127.0.0.1", ports[name])
        options = cluster["typedExtensionProtocolOptions"][HTTP_OPTIONS]
        assert options["@type"].endswith(HTTP_OPTIONS)
        expected: dict[str, Any] = {}
        if name == EXTPROC_CLUSTER:  # one gRPC stream per request: spread over connections
            expected = {"maxConcurrentStreams": 8}
        assert options["explicitHttpConfig"] == {"http2ProtocolOptions": expected}


def test_extproc_http_cluster_is_http1() -> None:
    cluster = clusters(bootstrap(opts(extproc_http_port=7003)))[EXTPROC_HTTP_CLUSTER]
    sock = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
    assert (sock["socketAddress"]["address"], sock["socketAddress"]["portValue"]) == ("127.0.0.1", 7003)
    options = cluster["typedExtensionProtocolOptions"][HTTP_OPTIONS]
    assert options["explicitHttpConfig"] == {"httpProtocolOptions": {}}
    assert options["commonHttpProtocolOptions"] == {"idleTimeout": "30s"}


def test_http2_options_unpack_as_the_upstream_http_extension() -> None:
    msg = bootstrap_message(opts(extproc_http_port=None))
    for cluster in msg.static_resources.clusters:
        packed = cluster.typed_extension_protocol_options[HTTP_OPTIONS]
        options = http_protocol_options_pb2.HttpProtocolOptions()
        assert packed.Unpack(options)
        assert options.explicit_http_config.HasField("http2_protocol_options")


def test_custom_hosts_and_ports() -> None:
    got = clusters(
        bootstrap(
            opts(xds_host="10.0.0.5", als_host="10.0.0.6", als_port=7001,
                 extproc_host="10.0.0.7", extproc_port=7002)
        )
    )  # fmt: skip

    def addr(name: str) -> tuple[str, int]:
        sock = got[name]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"][
            "address"
        ]["socketAddress"]
        return sock["address"], sock["portValue"]

    assert addr(XDS_CLUSTER) == ("10.0.0.5", 18000)
    assert addr(ALS_CLUSTER) == ("10.0.0.6", 7001)
    assert addr(EXTPROC_CLUSTER) == ("10.0.0.7", 7002)


def test_als_and_extproc_can_be_omitted() -> None:
    no_http = {"extproc_http_port": None}
    assert list(clusters(bootstrap(opts(als_port=None, **no_http)))) == [XDS_CLUSTER, EXTPROC_CLUSTER]
    assert list(clusters(bootstrap(opts(extproc_port=None, **no_http)))) == [XDS_CLUSTER, ALS_CLUSTER]
    assert list(clusters(bootstrap(opts(als_port=None, extproc_port=None, **no_http)))) == [
        XDS_CLUSTER
    ]
    assert list(clusters(bootstrap(opts(extproc_port=None)))) == [
        XDS_CLUSTER,
        ALS_CLUSTER,
        EXTPROC_HTTP_CLUSTER,
    ]


def test_xds_host_name_uses_logical_dns() -> None:
    xds = clusters(bootstrap(opts(xds_host="junction.internal")))[XDS_CLUSTER]
    assert xds["type"] == "LOGICAL_DNS"
    assert xds["dnsLookupFamily"] == "V4_PREFERRED"


def test_xds_cluster_has_tcp_keepalive() -> None:
    xds = clusters(bootstrap(opts()))[XDS_CLUSTER]
    assert xds["upstreamConnectionOptions"]["tcpKeepalive"] == {
        "keepaliveProbes": 3,
        "keepaliveTime": 30,
        "keepaliveInterval": 10,
    }


@pytest.mark.parametrize(("delta", "api_type"), [(False, "GRPC"), (True, "DELTA_GRPC")])
def test_dynamic_resources_over_one_ads_stream(delta: bool, api_type: str) -> None:
    dyn = bootstrap(opts(delta=delta))["dynamicResources"]
    assert dyn["adsConfig"] == {
        "apiType": api_type,
        "transportApiVersion": "V3",
        "grpcServices": [{"envoyGrpc": {"clusterName": XDS_CLUSTER}}],
        "setNodeOnFirstMessageOnly": True,
    }
    assert dyn["cdsConfig"] == {"ads": {}, "resourceApiVersion": "V3"}
    assert dyn["ldsConfig"] == {"ads": {}, "resourceApiVersion": "V3"}


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"node_id": ""}, "node_id"),
        ({"node_cluster": " "}, "node_cluster"),
        ({"xds_port": 0}, "xds_port"),
        ({"xds_port": 70000}, "xds_port"),
        ({"admin_port": -1}, "admin_port"),
        ({"als_port": 0}, "als_port"),
        ({"extproc_port": True}, "extproc_port"),
        ({"xds_host": ""}, "xds_host"),
        ({"admin_host": "localhost"}, "admin_host"),
    ],
)
def test_bad_options_name_the_option(kw: dict[str, Any], named: str) -> None:
    with pytest.raises(BootstrapError, match=named) as info:
        opts(**kw)
    assert isinstance(info.value, JunctionError)


def test_options_are_frozen() -> None:
    o = opts()
    with pytest.raises(AttributeError):
        o.xds_port = 1  # type: ignore[misc]
