"""Names shared by the bootstrap, translation and the xDS server.

They live in one dependency-free module so :mod:`junction.xds.translate` (pure) and
:mod:`junction.xds.bootstrap` agree without importing each other.
"""

from __future__ import annotations

__all__ = [
    "ALS_CLUSTER",
    "EXTPROC_CLUSTER",
    "EXTPROC_HTTP_CLUSTER",
    "LISTENER_NAME",
    "RESERVED_CLUSTERS",
    "ROUTE_CONFIG_NAME",
    "XDS_CLUSTER",
]

#: Static clusters of the bootstrap (SPEC.md section 3): the xDS server, the access-log
#: receiver and the ext_proc decision service.
XDS_CLUSTER = "junction_xds"
ALS_CLUSTER = "junction_als"
EXTPROC_CLUSTER = "junction_extproc"
#: The decision service's other transport: Envoy's ext_proc ``http_service`` (HTTP/1.1).
EXTPROC_HTTP_CLUSTER = "junction_extproc_http"

#: A CDS cluster may not reuse a static cluster's name: Envoy rejects the whole CDS update
#: ("... is a static cluster and cannot be added/updated via CDS").
RESERVED_CLUSTERS = frozenset({XDS_CLUSTER, ALS_CLUSTER, EXTPROC_CLUSTER, EXTPROC_HTTP_CLUSTER})

#: The one HTTP listener and the one route configuration translation produces.
LISTENER_NAME = "junction_http"
ROUTE_CONFIG_NAME = "junction_routes"
