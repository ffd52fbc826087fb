"""Clusters (CDS) and their endpoints (EDS): one of each per configured cluster name.

Pure: config and instances in, Envoy messages out; no I/O, no clock, no randomness.

Mapping (YAML -> Envoy v3):

- ``cluster.loadbalancer.<name>.lb-policy`` -> ``Cluster.lb_policy``
  (round-robin, least-request, random, ring-hash, maglev).
- ``...health-check`` -> one ``Cluster.health_checks`` entry, exactly as configured:
  ``type: http`` -> ``http_health_check {host, path=value, expected_statuses}``,
  ``type: tcp`` -> ``tcp_health_check {}`` (connect-only); ``timeout``, ``interval``,
  ``healthy``, ``unhealthy`` -> the fields of the same meaning.
- ``listener.timeout.connect`` -> every cluster's ``connect_timeout`` (1 s when absent).
- ``endpoint.eds.<name>.port`` -> the port of every endpoint (else the instance's own).
- ``endpoint.eds.<name>.balancing-policy: locality`` ->
  ``common_lb_config.locality_weighted_lb_config`` plus a ``load_balancing_weight`` on each
  locality (the sum of its instances' weights).
- ``...outlier-detection`` and ``...slow-start``: see :mod:`junction.xds.translate_lb`.
- ``Instance.health`` -> ``LbEndpoint.health_status`` (same names as ``core.v3.HealthStatus``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import groupby

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from junction.catalog.model import Health, Instance
from junction.config.model import Config, EdsEndpoint, HealthCheck
from junction.xds.translate_lb import apply_lb_extras

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "HEALTH_STATUS",
    "LB_POLICIES",
    "ads_config_source",
    "build_cluster",
    "build_load_assignment",
    "duration",
]

#: Used when ``listener.timeout.connect`` is absent (Envoy's own default is 5 s; the seed
#: deployment used 1 s, and on a LAN a longer wait only delays the retry elsewhere).
DEFAULT_CONNECT_TIMEOUT = 1.0

LB_POLICIES: Mapping[str, cluster_pb2.Cluster.LbPolicy.ValueType] = {
    "round-robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least-request": cluster_pb2.Cluster.LEAST_REQUEST,
    "random": cluster_pb2.Cluster.RANDOM,
    "ring-hash": cluster_pb2.Cluster.RING_HASH,
    "maglev": cluster_pb2.Cluster.MAGLEV,
}

HEALTH_STATUS: Mapping[Health, health_check_pb2.HealthStatus.ValueType] = {
    Health.HEALTHY: health_check_pb2.HEALTHY,
    Health.DEGRADED: health_check_pb2.DEGRADED,
    Health.UNHEALTHY: health_check_pb2.UNHEALTHY,
    Health.DRAINING: health_check_pb2.DRAINING,
}

# When two instances collapse onto one address:port (a port override and two instances of
# the service on one host), keep the one most able to serve.
_HEALTH_RANK = {Health.HEALTHY: 0, Health.DEGRADED: 1, Health.DRAINING: 2, Health.UNHEALTHY: 3}


def duration(seconds: float) -> duration_pb2.Duration:
    """Seconds (float) -> ``google.protobuf.Duration``, rounded to the nanosecond."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1_000_000_000))
    return d


def ads_config_source() -> config_source_pb2.ConfigSource:
    """``{ads: {}, resource_api_version: V3}``: fetch the resource over the ADS stream."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def build_cluster(config: Config, name: str) -> cluster_pb2.Cluster:
    """The CDS resource of cluster ``name``: EDS-discovered, named by its Consul service."""
    lb = config.load_balancer(name)
    eds = config.eds(name)
    connect = config.listener.timeout.connect or DEFAULT_CONNECT_TIMEOUT
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ads_config_source(), service_name=name
        ),
        connect_timeout=duration(connect),
        lb_policy=LB_POLICIES[lb.lb_policy],
    )
    if lb.health_check is not None:
        cluster.health_checks.append(_health_check(lb.health_check))
        # Consul is the source of truth for membership: an instance deregistered from the
        # catalog is gone (often its VM too), so drop it at once instead of waiting for
        # active checks to fail it (Envoy keeps a removed-but-passing host by default; see
        # Cluster.ignore_health_on_host_removal). Draining is expressed as DRAINING health,
        # not removal, so this does not cut short a planned drain.
        cluster.ignore_health_on_host_removal = True
        # close_connections_on_host_health_failure stays false on purpose: a failed check
        # already stops new requests to the host, and closing its connections would abort
        # requests in flight ("without dropped requests", SPEC.md section 3).
    if eds.balancing_policy == "locality":
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    apply_lb_extras(cluster, lb)  # outlier-detection, slow-start (translate_lb)
    return cluster


def _health_check(hc: HealthCheck) -> health_check_pb2.HealthCheck:
    check = health_check_pb2.HealthCheck(
        timeout=duration(hc.timeout),
        interval=duration(hc.interval),
        healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy),
        # Envoy checks a cluster that has had no traffic only every 60 s by default
        # (HealthCheck.no_traffic_interval). The configured interval is what operators
        # expect, and a freshly carved-out cluster has no traffic yet: use it throughout.
        no_traffic_interval=duration(hc.interval),
    )
    if hc.type == "tcp":
        # Empty send/receive: a successful connect is a pass (HealthCheck.TcpHealthCheck).
        check.tcp_health_check.SetInParent()
    else:
        http = check.http_health_check
        http.path = hc.value
        if hc.host is not None:
            http.host = hc.host  # else Envoy sends the cluster name as Host
        # Half-open [start, end) ranges, as Envoy's Int64Range wants.
        http.expected_statuses.extend(
            range_pb2.Int64Range(start=lo, end=hi) for lo, hi in hc.status_ranges()
        )
    return check


def build_load_assignment(
    config: Config, name: str, instances: Iterable[Instance]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The EDS resource of cluster ``name``.

    Endpoints are grouped into one ``LocalityLbEndpoints`` per ``(region, zone)``, sorted;
    within a locality, sorted by address and port. A cluster with no instances gets an
    empty assignment: Envoy needs one to finish warming the cluster (xDS protocol,
    "Resource warming"), after which it answers 503 "no healthy upstream".
    """
    eds = config.eds(name)
    weighted = eds.balancing_policy == "locality"
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    endpoints = _dedupe(instances, eds)
    for (region, zone), members in groupby(endpoints, key=lambda ep: (ep[0].region, ep[0].zone)):
        group = list(members)
        locality = cla.endpoints.add()
        if region or zone:
            locality.locality.region = region
            locality.locality.zone = zone
        for inst, port in group:
            locality.lb_endpoints.append(_lb_endpoint(inst, port))
        if weighted:
            # With locality_weighted_lb_config, a locality without a weight gets no
            # traffic at all (Envoy docs, "Locality weighted load balancing"). The sum of
            # the instance weights keeps the per-instance share what it is without it;
            # Envoy itself scales it down by the locality's unhealthy fraction.
            locality.load_balancing_weight.value = sum(_weight(i) for i, _ in group)
    return cla


def _dedupe(instances: Iterable[Instance], eds: EdsEndpoint) -> list[tuple[Instance, int]]:
    """``(instance, port)`` pairs sorted by locality then address, one per address:port."""
    best: dict[tuple[str, int], Instance] = {}
    for inst in instances:
        key = (inst.address, eds.port if eds.port is not None else inst.port)
        kept = best.get(key)
        if kept is None or (_HEALTH_RANK[inst.health], inst.sort_key()) < (
            _HEALTH_RANK[kept.health],
            kept.sort_key(),
        ):
            best[key] = inst
    pairs = [(inst, port) for (_, port), inst in best.items()]
    pairs.sort(key=lambda p: (p[0].region, p[0].zone, p[0].address, p[1]))
    return pairs


def _weight(inst: Instance) -> int:
    # LbEndpoint.load_balancing_weight must be >= 1; a catalog reporting 0 means "least".
    return max(1, inst.weight)


def _lb_endpoint(inst: Instance, port: int) -> endpoint_components_pb2.LbEndpoint:
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(
                    protocol=address_pb2.SocketAddress.TCP,
                    address=inst.address,
                    port_value=port,
                )
            )
        ),
        health_status=HEALTH_STATUS[inst.health],
        load_balancing_weight=wrappers_pb2.UInt32Value(value=_weight(inst)),
    )
