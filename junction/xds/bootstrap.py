"""The Envoy bootstrap: everything Envoy needs before it can talk to Junction.

Envoy is configured only through xDS v3 (SPEC.md section 3). Its bootstrap therefore holds
just: the node identity (id, cluster, locality), the admin listener (loopback), three
static clusters -- the xDS server, the ALS receiver and the ext_proc service, all HTTP/2
because all three speak gRPC -- and ``dynamic_resources`` pointing CDS and LDS at one ADS
stream (state of the world or delta). Routes (RDS) and endpoints (EDS) then come over the
same stream, named by the listeners and clusters (xDS protocol, "Aggregated Discovery
Service").

The bootstrap is built as the ``envoy.config.bootstrap.v3.Bootstrap`` message and then
converted to proto3 JSON, so a misspelled field is a Python error here, not an Envoy
startup failure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, json_format, wrappers_pb2

from junction.errors import JunctionError
from junction.xds.names import ALS_CLUSTER, EXTPROC_CLUSTER, EXTPROC_HTTP_CLUSTER, XDS_CLUSTER
from junction.xds.translate_cluster import ads_config_source, duration

__all__ = [
    "ALS_CLUSTER",
    "EXTPROC_CLUSTER",
    "EXTPROC_HTTP_CLUSTER",
    "XDS_CLUSTER",
    "BootstrapError",
    "BootstrapOptions",
    "bootstrap",
    "bootstrap_message",
]

#: Connect timeout of the static clusters: all are expected on loopback or the same LAN.
STATIC_CONNECT_TIMEOUT = 1.0
#: ext_proc opens one gRPC stream per request; capping streams per HTTP/2 connection makes
#: Envoy open more connections under load, which SO_REUSEPORT spreads over the decision
#: service's worker processes (one connection per Envoy worker would pin each to one).
EXTPROC_STREAMS_PER_CONNECTION = 8
#: ...and connections are recycled after this many streams, so that a quiet period that
#: left only one or two connections (possibly hashed to the same worker) does not keep the
#: load on one worker for good. One new connection per 1000 decisions is cheap.
EXTPROC_STREAMS_PER_CONNECTION_LIFETIME = 1000
#: Idle HTTP/1.1 connections to the decision service are closed by Envoy first (the service
#: closes them after 60 s), so Envoy never sends on a connection the service is closing.
EXTPROC_HTTP_IDLE_TIMEOUT = 30.0
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class BootstrapError(JunctionError):
    """The bootstrap options are invalid (a flag's value); the message names the option."""


@dataclass(frozen=True, kw_only=True)
class BootstrapOptions:
    """Where Envoy finds Junction's services, and who this Envoy is.

    ``als_port`` / ``extproc_port`` / ``extproc_http_port`` of None omit that static
    cluster (``extproc_http_port``: the decision service's ``http_service`` transport, on
    ``extproc_host`` too). ``delta`` selects incremental xDS (``DELTA_GRPC``) instead of
    state of the world (``GRPC``).
    ``admin_port`` may be 0 (Envoy picks a free port; see ``--admin-address-path``).
    """

    node_id: str
    node_cluster: str = "junction"
    zone: str = ""
    region: str = ""
    xds_host: str = "127.0.0.1"
    xds_port: int
    admin_host: str = "127.0.0.1"
    admin_port: int
    als_host: str = "127.0.0.1"
    als_port: int | None = 9001
    extproc_host: str = "127.0.0.1"
    extproc_port: int | None = 9002
    extproc_http_port: int | None = 9003
    delta: bool = False

    def __post_init__(self) -> None:
        if not self.node_id.strip():
            raise BootstrapError("node_id: must not be empty")
        if not self.node_cluster.strip():
            raise BootstrapError("node_cluster: must not be empty")
        _check_port("xds_port", self.xds_port, allow_zero=False)
        _check_port("admin_port", self.admin_port, allow_zero=True)
        if self.als_port is not None:
            _check_port("als_port", self.als_port, allow_zero=False)
        if self.extproc_port is not None:
            _check_port("extproc_port", self.extproc_port, allow_zero=False)
        if self.extproc_http_port is not None:
            _check_port("extproc_http_port", self.extproc_http_port, allow_zero=False)
        for what in ("xds_host", "admin_host", "als_host", "extproc_host"):
            if not getattr(self, what).strip():
                raise BootstrapError(f"{what}: must not be empty")
        try:
            ipaddress.ip_address(self.admin_host)
        except ValueError:
            # Envoy binds the admin listener to an address; it never resolves a name there.
            raise BootstrapError(
                f"admin_host: must be an IP address, got {self.admin_host!r}"
            ) from None


def _check_port(what: str, port: int, *, allow_zero: bool) -> None:
    lo = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not lo <= port <= 65535:
        raise BootstrapError(f"{what}: must be an integer {lo}..65535, got {port!r}")


def bootstrap(opts: BootstrapOptions) -> dict[str, Any]:
    """The bootstrap as proto3 JSON (camelCase), ready to write to Envoy's ``-c`` file."""
    doc: dict[str, Any] = json_format.MessageToDict(bootstrap_message(opts))
    return doc


def bootstrap_message(opts: BootstrapOptions) -> bootstrap_pb2.Bootstrap:
    """The bootstrap as an ``envoy.config.bootstrap.v3.Bootstrap`` message."""
    node = base_pb2.Node(id=opts.node_id, cluster=opts.node_cluster)
    if opts.region or opts.zone:
        node.locality.CopyFrom(base_pb2.Locality(region=opts.region, zone=opts.zone))

    clusters = [_grpc_cluster(XDS_CLUSTER, opts.xds_host, opts.xds_port, keepalive=True)]
    if opts.als_port is not None:
        clusters.append(_grpc_cluster(ALS_CLUSTER, opts.als_host, opts.als_port))
    if opts.extproc_port is not None:
        clusters.append(
            _grpc_cluster(
                EXTPROC_CLUSTER,
                opts.extproc_host,
                opts.extproc_port,
                max_streams=EXTPROC_STREAMS_PER_CONNECTION,
                max_requests=EXTPROC_STREAMS_PER_CONNECTION_LIFETIME,
            )
        )
    if opts.extproc_http_port is not None:
        clusters.append(_extproc_http_cluster(opts.extproc_host, opts.extproc_http_port))

    api_type = (
        config_source_pb2.ApiConfigSource.DELTA_GRPC
        if opts.delta
        else config_source_pb2.ApiConfigSource.GRPC
    )
    return bootstrap_pb2.Bootstrap(
        node=node,
        admin=bootstrap_pb2.Admin(address=_socket(opts.admin_host, opts.admin_port)),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=clusters),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=api_type,
                transport_api_version=config_source_pb2.V3,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                            cluster_name=XDS_CLUSTER
                        )
                    )
                ],
                # The node is identical on every request of a stream; send it once.
                set_node_on_first_message_only=True,
            ),
            cds_config=ads_config_source(),
            lds_config=ads_config_source(),
        ),
    )


def _socket(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(
            protocol=address_pb2.SocketAddress.TCP, address=host, port_value=port
        )
    )


def _extproc_http_cluster(host: str, port: int) -> cluster_pb2.Cluster:
    """The decision service's ``http_service`` transport: HTTP/1.1, one request per
    connection at a time (so concurrent calls spread over connections, hence workers)."""
    http1 = http_protocol_options_pb2.HttpProtocolOptions(
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration(EXTPROC_HTTP_IDLE_TIMEOUT)
        ),
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        ),
    )
    return _grpc_cluster(EXTPROC_HTTP_CLUSTER, host, port, protocol_options=http1)


def _grpc_cluster(
    name: str,
    host: str,
    port: int,
    *,
    keepalive: bool = False,
    max_streams: int | None = None,
    max_requests: int | None = None,
    protocol_options: http_protocol_options_pb2.HttpProtocolOptions | None = None,
) -> cluster_pb2.Cluster:
    """A static cluster of one gRPC server: HTTP/2 upstream, 1 s connect timeout.
    ``protocol_options`` replaces HTTP/2 (for the one HTTP/1.1 static cluster)."""
    h2 = protocol_pb2.Http2ProtocolOptions()
    if max_streams is not None:
        h2.max_concurrent_streams.value = max_streams
    http2 = protocol_options or http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=h2
        )
    )
    if max_requests is not None:
        http2.common_http_protocol_options.max_requests_per_connection.value = max_requests
    packed = any_pb2.Any()
    packed.Pack(http2, deterministic=True)
    cluster = cluster_pb2.Cluster(
        name=name,
        connect_timeout=duration(STATIC_CONNECT_TIMEOUT),
        # gRPC needs HTTP/2 to the upstream (Cluster.typed_extension_protocol_options;
        # the cluster-level http2_protocol_options field is deprecated).
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: packed},
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=_socket(host, port))
                        )
                    ]
                )
            ],
        ),
    )
    if _is_ip(host):
        cluster.type = cluster_pb2.Cluster.STATIC
    else:
        # A host name (e.g. a control plane reached by DNS): one address at a time, as
        # LOGICAL_DNS does for a single long-lived gRPC connection.
        cluster.type = cluster_pb2.Cluster.LOGICAL_DNS
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if keepalive:
        # A control plane across the network can vanish without a FIN; keepalives let
        # Envoy notice within about a minute and reconnect, instead of the OS's 2 h.
        cluster.upstream_connection_options.tcp_keepalive.CopyFrom(
            address_pb2.TcpKeepalive(
                keepalive_time=wrappers_pb2.UInt32Value(value=30),
                keepalive_interval=wrappers_pb2.UInt32Value(value=10),
                keepalive_probes=wrappers_pb2.UInt32Value(value=3),
            )
        )
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
