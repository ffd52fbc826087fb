"""Small hand-made Envoy resources and snapshots for the xDS core and server tests.

Independent of junction.xds.translate on purpose: the protocol is tested on its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.rpc import status_pb2

from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

ROUTE_NAME = "local_route"
LISTENER_NAME = "http"
NODE = "envoy-1"


def cluster(name: str, *, lb: int = 0) -> cluster_pb2.Cluster:
    """An EDS cluster (over ADS) named ``name``; ``lb`` varies its content."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        lb_policy=lb,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource()
            ),
            service_name=name,
        ),
    )


def cla(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address="127.0.0.1", port_value=port
                                )
                            )
                        )
                    )
                    for port in ports
                ]
            )
        ],
    )


def routes(name: str, weights: Mapping[str, int]) -> route_pb2.RouteConfiguration:
    """One virtual host, one ``/`` route: a single cluster, or weighted clusters."""
    action = route_components_pb2.RouteAction()
    if len(weights) == 1:
        action.cluster = next(iter(weights))
    else:
        action.weighted_clusters.CopyFrom(
            route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(
                        name=c, weight=wrappers_pb2.UInt32Value(value=w)
                    )
                    for c, w in weights.items()
                ]
            )
        )
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="vh",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"), route=action
                    )
                ],
            )
        ],
    )


def listener(name: str, route_name: str, port: int = 8000) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="http",
        rds=hcm_pb2.Rds(
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource()
            ),
            route_config_name=route_name,
        ),
    )
    typed = any_pb2.Any()
    typed.Pack(hcm)
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=typed
                    )
                ]
            )
        ],
    )


def snapshot(
    weights: Mapping[str, int],
    *,
    extra_clusters: tuple[str, ...] = (),
    ports: Mapping[str, tuple[int, ...]] | None = None,
    lb: Mapping[str, int] | None = None,
    config_version: str = "v1",
) -> Snapshot:
    """Clusters for ``weights`` (+ ``extra_clusters``), their endpoints, one route config
    splitting ``/`` by ``weights``, one listener using it."""
    names = sorted({*weights, *extra_clusters})
    ports = ports or {}
    lb = lb or {}
    return Snapshot.build(
        {
            CLUSTER: [(n, cluster(n, lb=lb.get(n, 0))) for n in names],
            ENDPOINT: [(n, cla(n, *ports.get(n, (9000,)))) for n in names],
            ROUTE: [(ROUTE_NAME, routes(ROUTE_NAME, weights))],
            LISTENER: [(LISTENER_NAME, listener(LISTENER_NAME, ROUTE_NAME))],
        },
        origin="test",
        config_version=config_version,
    )


def names_of(
    response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse,
) -> list[str]:
    """Resource names in a response (decoded from the payloads)."""
    out = []
    for item in response.resources:
        if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
            out.append(item.name)
            continue
        message = {
            CLUSTER: cluster_pb2.Cluster,
            ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            ROUTE: route_pb2.RouteConfiguration,
            LISTENER: listener_pb2.Listener,
        }[response.type_url]()
        item.Unpack(message)
        out.append(message.cluster_name if response.type_url == ENDPOINT else message.name)
    return out


def route_weights(
    response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse,
) -> dict[str, int]:
    """``cluster -> weight`` of the first route of the first route config in a response."""
    item = response.resources[0]
    any_msg = item.resource if isinstance(response, discovery_pb2.DeltaDiscoveryResponse) else item
    rc = route_pb2.RouteConfiguration()
    any_msg.Unpack(rc)
    action = rc.virtual_hosts[0].routes[0].route
    if action.WhichOneof("cluster_specifier") == "cluster":
        return {action.cluster: 100}
    return {c.name: c.weight.value for c in action.weighted_clusters.clusters}


def request(
    type_url: str,
    *,
    names: tuple[str, ...] = (),
    version: str = "",
    nonce: str = "",
    node: str | None = NODE,
    error: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
    )
    if node is not None:
        req.node.id = node
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def ack(
    response: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()
) -> discovery_pb2.DiscoveryRequest:
    """The ACK Envoy sends for ``response`` (node omitted, as after the first request)."""
    return request(
        response.type_url,
        names=names,
        version=response.version_info,
        nonce=response.nonce,
        node=None,
    )


def nack(
    response: discovery_pb2.DiscoveryResponse, kept: str, error: str, names: tuple[str, ...] = ()
) -> discovery_pb2.DiscoveryRequest:
    return request(
        response.type_url, names=names, version=kept, nonce=response.nonce, node=None, error=error
    )


def delta_request(
    type_url: str,
    *,
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    initial: Mapping[str, str] | None = None,
    nonce: str = "",
    node: str | None = NODE,
    error: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        initial_resource_versions=dict(initial or {}),
        response_nonce=nonce,
    )
    if node is not None:
        req.node.id = node
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def delta_ack(
    response: discovery_pb2.DeltaDiscoveryResponse, error: str | None = None
) -> discovery_pb2.DeltaDiscoveryRequest:
    return delta_request(response.type_url, nonce=response.nonce, node=None, error=error)
