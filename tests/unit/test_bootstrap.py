"""The Envoy bootstrap generator (no Envoy here; tests/integration validates with Envoy).

Golden file: tests/golden/bootstrap.json; regenerate with
``JUNCTION_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_bootstrap.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, json_format, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

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


def set_fields(message: Message, path: str = "") -> Iterator[tuple[str, FieldDescriptor, Any]]:
    """Every field set anywhere in ``message``, packed ``Any`` payloads included."""
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        any_message = cast(any_pb2.Any, message)
        inner = symbol_database.Default().GetSymbol(any_message.TypeName())()
        assert any_message.Unpack(inner), any_message.type_url
        yield from set_fields(inner, f"{path}<{any_message.TypeName()}>")
        return
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        yield where, field, value
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values())
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        for item in values:
            if isinstance(item, Message):
                yield from set_fields(item, where)


@pytest.mark.parametrize("delta", [False, True])
def test_no_deprecated_field_or_enum_value_is_used(delta: bool) -> None:
    # Envoy rejects deprecated v3 fields by default once their runtime guard flips
    # (docs: "Runtime > Deprecated"); the bootstrap, Any payloads included, uses none.
    message = bootstrap_message(opts(delta=delta, zone="zone-a", region="r1"))
    seen = 0
    for where, field, value in set_fields(message):
        seen += 1
        assert not field.GetOptions().deprecated, where
        if field.enum_type is not None:
            numbers = value if field.is_repeated else [value]
            for number in numbers:
                assert not field.enum_type.values_by_number[number].GetOptions().deprecated, where
    assert seen > 50  # the walk reached into the clusters and their Any options
    # And the JSON Envoy reads is that message (proto3 JSON, camelCase, nothing unknown).
    assert (
        json_format.ParseDict(
            bootstrap(opts(delta=delta, zone="zone-a", region="r1")), bootstrap_pb2.Bootstrap()
        )
        == message
    )


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
    assert (sock["socketAddress"]["address"], sock["socketAddress"]["portValue"]) == (
        "127.0.0.1",
        7003,
    )
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
        sock = got[name]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"][
            "socketAddress"
        ]
        return sock["address"], sock["portValue"]

    assert addr(XDS_CLUSTER) == ("10.0.0.5", 18000)
    assert addr(ALS_CLUSTER) == ("10.0.0.6", 7001)
    assert addr(EXTPROC_CLUSTER) == ("10.0.0.7", 7002)


def test_als_and_extproc_can_be_omitted() -> None:
    no_http = {"extproc_http_port": None}
    assert list(clusters(bootstrap(opts(als_port=None, **no_http)))) == [
        XDS_CLUSTER,
        EXTPROC_CLUSTER,
    ]
    assert list(clusters(bootstrap(opts(extproc_port=None, **no_http)))) == [
        XDS_CLUSTER,
        ALS_CLUSTER,
    ]
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


def test_tls_flags_put_an_mtls_socket_on_the_xds_and_als_clusters_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    from junction.cli import main

    tls = ["--tls-cert", "/etc/e.pem", "--tls-key", "/etc/e.key", "--tls-ca", "/etc/ca.pem"]
    assert main(["bootstrap", "--node-id", "edge-a", *tls, "--tls-server-name", "cp"]) == 0
    doc = json.loads(capsys.readouterr().out)
    message = json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())
    by_name = {c.name: c for c in message.static_resources.clusters}
    for name in (XDS_CLUSTER, ALS_CLUSTER):
        socket = by_name[name].transport_socket
        assert socket.name == "envoy.transport_sockets.tls"
        context = tls_pb2.UpstreamTlsContext()
        assert socket.typed_config.Unpack(context)
        common = context.common_tls_context
        [cert] = common.tls_certificates
        assert (cert.certificate_chain.filename, cert.private_key.filename) == (
            "/etc/e.pem",
            "/etc/e.key",
        )
        assert common.validation_context.trusted_ca.filename == "/etc/ca.pem"
        assert list(common.alpn_protocols) == ["h2"] and context.sni == "cp"
    for name in (EXTPROC_CLUSTER, EXTPROC_HTTP_CLUSTER):  # on the Envoy's own host
        assert not by_name[name].HasField("transport_socket")
    assert main(["bootstrap", "--tls-cert", "/etc/e.pem"]) == 1
    assert "give all three" in capsys.readouterr().err
