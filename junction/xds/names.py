"""Names shared by the bootstrap, translation and the xDS server.

They live in one small module so :mod:`junction.xds.translate` (pure) and
:mod:`junction.xds.bootstrap` agree without importing each other. The static cluster
names are :mod:`junction.names`' (config refuses them too), re-exported here.
"""

from __future__ import annotations

from junction.names import (
    ALS_CLUSTER,
    EXTPROC_CLUSTER,
    EXTPROC_HTTP_CLUSTER,
    RESERVED_CLUSTERS,
    XDS_CLUSTER,
)

__all__ = [
    "ALS_CLUSTER",
    "EXTPROC_CLUSTER",
    "EXTPROC_HTTP_CLUSTER",
    "LISTENER_NAME",
    "RESERVED_CLUSTERS",
    "ROUTE_CONFIG_NAME",
    "XDS_CLUSTER",
]

#: The one HTTP listener and the one route configuration translation produces.
LISTENER_NAME = "junction_http"
ROUTE_CONFIG_NAME = "junction_routes"
