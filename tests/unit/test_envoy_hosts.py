"""Reading Envoy's admin ``/clusters?format=json``: which hosts take traffic, and why not."""

from __future__ import annotations

from typing import Any

from junction.envoy_admin import healthy_hosts, host_states


def host(port: int, **status: Any) -> dict[str, Any]:
    return {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "health_status": status,
    }


CLUSTERS = {
    "cluster_statuses": [
        {
            "name": "svc",
            "host_statuses": [
                host(1, eds_health_status="HEALTHY"),
                host(2, eds_health_status="HEALTHY", failed_outlier_check=True),
                host(3, eds_health_status="DRAINING"),
                host(4),  # eds_health_status absent: HEALTHY
                host(5, eds_health_status="DEGRADED", failed_active_health_check=False),
            ],
        },
        {"name": "empty"},
    ]
}


def test_host_states_say_what_envoy_says() -> None:
    states = host_states(CLUSTERS)
    svc = states["svc"]
    assert svc["127.0.0.1:1"] == {"eds_health_status": "HEALTHY", "flags": [], "serving": True}
    assert svc["127.0.0.1:2"] == {
        "eds_health_status": "HEALTHY",
        "flags": ["failed_outlier_check"],
        "serving": False,
    }
    assert svc["127.0.0.1:3"]["serving"] is False  # drained
    assert svc["127.0.0.1:4"] == {"eds_health_status": "HEALTHY", "flags": [], "serving": True}
    assert svc["127.0.0.1:5"]["serving"] is True and svc["127.0.0.1:5"]["flags"] == []
    assert states["empty"] == {}
    # The same verdict as /healthz's count.
    assert healthy_hosts(CLUSTERS) == {
        "svc": sum(h["serving"] for h in svc.values()),
        "empty": 0,
    }
