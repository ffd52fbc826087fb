"""Names of the static clusters Junction's bootstrap creates, which no config may reuse.

At the bottom of the layers (no imports): :mod:`junction.config.load` refuses them as
cluster names, and :mod:`junction.xds.names` (bootstrap, translation) uses them.
"""

from __future__ import annotations

__all__ = [
    "ALS_CLUSTER",
    "EXTPROC_CLUSTER",
    "EXTPROC_HTTP_CLUSTER",
    "RESERVED_CLUSTERS",
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
