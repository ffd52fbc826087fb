"""`junction up` in Consul mode, against the Consul test double, with a real Envoy.

The test drives the double through py-consul (the real client), the way an operator's
tooling would: KV writes, agent service registration, maintenance mode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import consul.aio
import pytest
from conftest import until
from consul_double import ConsulDouble
from harness import Junction, drive, free_port, junction_up, upstreams

pytestmark = pytest.mark.slow

KEY = "junction/config"
CONFIG = """\
listener:
  listen: {{protocol: tcp, address: 127.0.0.1, port: {listener}}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {{prefix: ["/api"], weight: {perl}}}
    web-api-go:   {{prefix: ["/api"], weight: {go}}}
cluster: {{loadbalancer: {{web-api-perl: {{}}, web-api-go: {{}}}}}}
"""


@dataclass
class ConsulStack:
    consul: ConsulDouble
    client: consul.aio.Consul
    junction: Junction
    listener: int
    ports: dict[str, int]


@pytest.fixture(params=["sotw", "delta"])
async def cstack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConsulStack]:
    ports = {"perl1": free_port(), "perl2": free_port(), "go": free_port()}
    listener = free_port()
    async with (
        ConsulDouble(node_meta={"zone": "zone-a", "region": "r1"}) as double,
        upstreams([("web-api-perl", ports["perl1"]), ("web-api-perl", ports["perl2"]),
                   ("web-api-go", ports["go"])]),
    ):  # fmt: skip
        host, port = double.address.split(":")
        client = consul.aio.Consul(host=host, port=int(port))
        try:
            await client.kv.put(KEY, CONFIG.format(listener=listener, perl=90, go=10))
            for sid, name, p in (
                ("perl-1", "web-api-perl", ports["perl1"]),
                ("perl-2", "web-api-perl", ports["perl2"]),
                ("go-1", "web-api-go", ports["go"]),
            ):
                await client.agent.service.register(
                    name, service_id=sid, address="127.0.0.1", port=p
                )
            extra = ["--consul-addr", double.address, "--consul-key", KEY]
            if request.param == "delta":
                extra.append("--delta")
            async with junction_up(
                tmp_path, None, None, listener_port=listener, extra=extra
            ) as junction:
                await junction.wait_acked()
                yield ConsulStack(double, client, junction, listener, ports)
        finally:
            await client.close()


async def test_kv_change_reaches_envoy(cstack: ConsulStack) -> None:
    tally = await drive(cstack.listener, "/api/x", count=200)
    assert tally.failures == 0
    assert set(tally.services) == {"web-api-perl", "web-api-go"}
    await cstack.client.kv.put(KEY, CONFIG.format(listener=cstack.listener, perl=0, go=100))

    async def all_go() -> bool:
        return (await drive(cstack.listener, "/api/x", count=20)).services == {"web-api-go": 20}

    await until(all_go, bool, timeout=10)
    status = await cstack.junction.status()
    assert status["config"]["origin"] == f"consul:{KEY}"


async def test_bad_kv_value_keeps_last_good(cstack: ConsulStack) -> None:
    before = (await cstack.junction.status())["snapshot"]["version"]
    await cstack.client.kv.put(KEY, CONFIG.format(listener=cstack.listener, perl=90, go="ten"))

    async def rejected() -> bool:
        return (await cstack.junction.status())["config"]["last_error"] is not None

    await until(rejected, bool, timeout=10)
    status = await cstack.junction.status()
    message = status["config"]["last_error"]["message"]
    assert (
        f"consul:{KEY}: line 7: route.cluster.web-api-go.weight: must be an integer 0..100"
        in message
    )
    assert status["snapshot"]["version"] == before
    assert (await drive(cstack.listener, "/api/x", count=50)).failures == 0


async def test_maintenance_mode_drains_the_instance(cstack: ConsulStack) -> None:
    await cstack.client.agent.service.maintenance("perl-1", "true", "kernel upgrade")

    async def draining() -> bool:
        clusters = await cstack.junction.envoy_admin("/clusters?format=json")
        for cluster in clusters["cluster_statuses"]:
            for host in cluster.get("host_statuses", []):
                port = host["address"]["socket_address"]["port_value"]
                if port == cstack.ports["perl1"]:
                    return host["health_status"].get("eds_health_status") == "DRAINING"
        return False

    await until(draining, bool, timeout=10)
    tally = await drive(cstack.listener, "/api/x", count=300)
    assert tally.failures == 0
    assert str(cstack.ports["perl1"]) not in tally.ports
    assert tally.ports[str(cstack.ports["perl2"])] > 0
    # Zone and region came from the node's meta.
    clusters = await cstack.junction.envoy_admin("/clusters?format=json")
    zones = {
        (h["locality"].get("region"), h["locality"].get("zone"))
        for c in clusters["cluster_statuses"] if c["name"] == "web-api-go"
        for h in c["host_statuses"]
    }  # fmt: skip
    assert zones == {("r1", "zone-a")}
    await cstack.client.agent.service.maintenance("perl-1", "false")

    async def back() -> bool:
        return (
            str(cstack.ports["perl1"]) in (await drive(cstack.listener, "/api/x", count=100)).ports
        )

    await until(back, bool, timeout=10)


async def test_consul_unreachable_keeps_serving_and_recovers(cstack: ConsulStack) -> None:
    await cstack.consul.stop_serving()
    try:

        async def reported() -> bool:
            sources = (await cstack.junction.status())["sources"]
            return any(not s["ok"] for s in sources.values())

        await until(reported, bool, timeout=10)
        tally = await drive(cstack.listener, "/api/x", count=200)
        assert tally.failures == 0
        assert set(tally.services) == {"web-api-perl", "web-api-go"}
    finally:
        await cstack.consul.start_serving()

    async def recovered() -> bool:
        sources = (await cstack.junction.status())["sources"]
        return all(s["ok"] for s in sources.values())

    await until(recovered, bool, timeout=20)
    # And it follows changes again.
    await cstack.client.kv.put(KEY, CONFIG.format(listener=cstack.listener, perl=100, go=0))

    async def all_perl() -> bool:
        return (await drive(cstack.listener, "/api/x", count=20)).services == {"web-api-perl": 20}

    await until(all_perl, bool, timeout=10)
