"""Reading what Envoy itself reports through its admin API (``/clusters?format=json``).

The health endpoint trusts Envoy over the catalog for "does this cluster have a healthy
host": Envoy combines EDS health with its own active health checks and outlier detection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

__all__ = ["fetch_clusters", "healthy_hosts", "host_states"]

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


def host_states(clusters_json: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per cluster, per ``address:port``, what Envoy says of the host: its EDS health, the
    flags set on it (``failed_outlier_check`` for an outlier ejection,
    ``failed_active_health_check``...) and whether it takes traffic (for /status)."""
    out: dict[str, dict[str, Any]] = {}
    for cluster in clusters_json.get("cluster_statuses", []):
        hosts: dict[str, Any] = {}
        for host in cluster.get("host_statuses", []):
            sock = host.get("address", {}).get("socket_address", {})
            status = host.get("health_status", {})
            eds = status.get("eds_health_status")
            flags = sorted(k for k, v in status.items() if k != "eds_health_status" and v)
            hosts[f"{sock.get('address')}:{sock.get('port_value')}"] = {
                "eds_health_status": eds or "HEALTHY",
                "flags": flags,
                "serving": eds in _SERVING and not any(status.get(f) for f in _FAILED),
            }
        out[cluster["name"]] = hosts
    return out


async def fetch_clusters(admin_address: str, timeout: float = 1.0) -> dict[str, Any]:
    """GET ``/clusters?format=json`` from Envoy's admin at ``host:port``."""
    url = f"http://{admin_address}/clusters?format=json"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as s, s.get(url) as resp:
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json(content_type=None)
        return data
