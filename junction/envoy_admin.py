"""Reading what Envoy itself reports through its admin API (``/clusters?format=json``).

The health endpoint trusts Envoy over the catalog for "does this cluster have a healthy
host": Envoy combines EDS health with its own active health checks and outlier detection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

__all__ = ["fetch_clusters", "healthy_hosts"]

# Flags in HostHealthStatus that take a host out of load balancing
# (envoy/admin/v3/clusters.proto).
_FAILED = (
    "failed_active_health_check",
    "failed_outlier_check",
    "failed_active_degraded_check",
    "pending_dynamic_removal",
    "pending_active_hc",
    "excluded_via_immediate_hc_fail",
    "active_hc_timeout",
)
_SERVING = {None, "HEALTHY", "DEGRADED"}  # eds_health_status absent means HEALTHY


def healthy_hosts(clusters_json: Mapping[str, Any]) -> dict[str, int]:
    """Per cluster name, how many hosts Envoy would send traffic to."""
    out: dict[str, int] = {}
    for cluster in clusters_json.get("cluster_statuses", []):
        count = 0
        for host in cluster.get("host_statuses", []):
            status = host.get("health_status", {})
            if status.get("eds_health_status") in _SERVING and not any(
                status.get(flag) for flag in _FAILED
            ):
                count += 1
        out[cluster["name"]] = count
    return out


async def fetch_clusters(admin_address: str, timeout: float = 1.0) -> dict[str, Any]:
    """GET ``/clusters?format=json`` from Envoy's admin at ``host:port``."""
    url = f"http://{admin_address}/clusters?format=json"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as s, s.get(url) as resp:
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json(content_type=None)
        return data
