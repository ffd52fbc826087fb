"""The control plane end to end: `junction up` with a real Envoy and real upstreams.

Each test starts its own upstreams, control plane and Envoy on free loopback ports, and
stops them. Both xDS variants (state-of-the-world and delta ADS) run the core scenarios.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import eventually, until
from harness import Junction, Tally, drive, free_port, junction_up, post, upstreams

pytestmark = pytest.mark.slow

CONFIG = """\
listener:
  listen: {{protocol: tcp, address: 127.0.0.1, port: {listener}}}
  timeout: {{connect: 1, request: 5}}
route:
  domain: ["example.com", "www.example.com"]
  host-header: "www.example.com"
  cluster:
    web-api-perl: {{prefix: ["/api"], weight: 90}}
    web-api-go:   {{prefix: ["/api"], weight: 10}}
    web-asset:    {{prefix: ["/asset"], weight: 100}}
cluster:
  loadbalancer:
    web-api-perl:
      lb-policy: round-robin
      discovery: eds
      health-check:
        type: http
        host: www.example.com
        value: /health_check
        expected: ["200"]
        timeout: 1
        interval: 0.2
        healthy: 1
        unhealthy: 2
    web-api-go: {{}}
    web-asset: {{}}
endpoint:
  eds:
    web-api-perl: {{protocol: tcp, balancing-policy: locality}}
"""


@dataclass
class Stack:
    junction: Junction
    ports: dict[str, int]
    config_path: Path
    instances_path: Path
    listener: int

    def instances_yaml(self, perl: list[int] | None = None, extra: str = "") -> str:
        perl_ports = perl if perl is not None else [self.ports["perl1"], self.ports["perl2"]]
        lines = ["services:", "  web-api-perl:"]
        lines += [f"    - {{address: 127.0.0.1, port: {p}, zone: zone-a}}" for p in perl_ports]
        lines += [
            "  web-api-go:",
            f"    - {{address: 127.0.0.1, port: {self.ports['go']}, zone: zone-b}}",
            "  web-asset:",
            f"    - {{address: 127.0.0.1, port: {self.ports['asset']}}}",
        ]
        return "\n".join(lines) + "\n" + extra

    def write_instances(self, text: str) -> None:
        tmp = self.instances_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.instances_path)

    def write_config(self, text: str) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)


@pytest.fixture(params=["sotw", "delta"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    ports = {k: free_port() for k in ("perl1", "perl2", "perl3", "go", "asset")}
    listener = free_port()
    config_path = tmp_path / "config.yaml"
    instances_path = tmp_path / "instances.yaml"
    config_path.write_text(CONFIG.format(listener=listener))
    extra = ["--delta"] if request.param == "delta" else []
    async with upstreams(
        [
            ("web-api-perl", ports["perl1"]),
            ("web-api-perl", ports["perl2"]),
            ("web-api-perl", ports["perl3"]),
            ("web-api-go", ports["go"]),
            ("web-asset", ports["asset"]),
        ]
    ):
        stack = Stack(None, ports, config_path, instances_path, listener)  # type: ignore[arg-type]
        instances_path.write_text(stack.instances_yaml())
        async with junction_up(
            tmp_path, config_path, instances_path, listener_port=listener, extra=extra
        ) as junction:
            stack.junction = junction
            await junction.wait_acked()
            await wait_serving(stack)
            yield stack


async def wait_serving(stack: Stack) -> None:
    """Until every upstream of the split answers through Envoy (health checks have passed)."""
    seen: Tally = Tally()

    async def both() -> bool:
        await drive(stack.listener, "/api/x", count=60, tally=seen)
        return {"web-api-perl", "web-api-go"} <= set(seen.services)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not await both():
        if loop.time() > deadline:
            raise AssertionError(f"not serving: {seen}\n{stack.junction.log()}")


async def test_weighted_split_prefix_routing_and_host_rewrite(stack: Stack) -> None:
    tally = await drive(stack.listener, "/api/users", count=1000, concurrency=16)
    assert tally.failures == 0, tally
    go = tally.services["web-api-go"]
    # 10% of 1000: mean 100, sd ~9.5; five sd either side fails once in millions of runs.
    assert 52 <= go <= 148, tally.services
    assert tally.services["web-api-perl"] == 1000 - go
    assert set(tally.hosts) == {"www.example.com"}  # host-header is a host rewrite

    assets = await drive(stack.listener, "/asset/logo.png", count=50, host="www.example.com")
    assert assets.services == {"web-asset": 50}
    other_host = await drive(stack.listener, "/api/x", count=5, host="elsewhere.example")
    assert other_host.statuses == {404: 5}  # no virtual host for that domain
    no_route = await drive(stack.listener, "/nothing", count=5)
    assert no_route.statuses == {404: 5}


async def test_failing_health_check_ejects_the_upstream(stack: Stack) -> None:
    bad = stack.ports["perl1"]
    await post(f"http://127.0.0.1:{bad}/_control?health=fail")

    async def ejected() -> bool:
        clusters = await stack.junction.envoy_admin("/clusters?format=json")
        for cluster in clusters["cluster_statuses"]:
            if cluster["name"] != "web-api-perl":
                continue
            for host in cluster.get("host_statuses", []):
                if host["address"]["socket_address"]["port_value"] == bad:
                    return bool(host["health_status"].get("failed_active_health_check"))
        return False

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await ejected():
        assert loop.time() < deadline, "host never marked failed_active_health_check"
        await asyncio.sleep(0.1)
    tally = await drive(stack.listener, "/api/x", count=300)
    assert tally.failures == 0
    assert str(bad) not in tally.ports, tally.ports


async def test_instances_added_and_removed_without_failed_requests(stack: Stack) -> None:
    stop = asyncio.Event()
    background = Tally()
    load = asyncio.create_task(
        drive(stack.listener, "/api/x", count=100_000, duration=30, stop=stop, tally=background)
    )
    new, gone = stack.ports["perl3"], stack.ports["perl2"]
    try:
        stack.write_instances(stack.instances_yaml(perl=[stack.ports["perl1"], new]))
        await eventually(lambda: background.ports[str(new)] > 0, timeout=30)
        # Envoy has taken perl2 out (EDS applied; the cluster ignores health on removal).
        await until(
            lambda: perl_ports(stack), lambda ports: ports == {stack.ports["perl1"], new}
        )
        served = sum(background.statuses.values())
        await eventually(lambda: sum(background.statuses.values()) > served + 50, timeout=30)
    finally:
        stop.set()
        await load  # quiescence: no request of the changing period is still in flight
    assert background.failures == 0, (background.statuses, background.errors[:3])
    # Now that nothing is in flight, every new request avoids perl2.
    after = await drive(stack.listener, "/api/x", count=300)
    assert after.failures == 0, after
    assert str(gone) not in after.ports and after.ports[str(new)] > 0, after.ports


async def perl_ports(stack: Stack) -> set[int]:
    """The web-api-perl hosts Envoy currently has (admin /clusters)."""
    clusters = await stack.junction.envoy_admin("/clusters?format=json")
    return {
        host["address"]["socket_address"]["port_value"]
        for cluster in clusters["cluster_statuses"]
        if cluster["name"] == "web-api-perl"
        for host in cluster.get("host_statuses", [])
    }


async def test_bad_config_keeps_last_good_serving(stack: Stack) -> None:
    before = await stack.junction.status()
    stack.write_config(
        CONFIG.format(listener=stack.listener).replace("weight: 10}", "weight: 110}")
    )

    async def rejected() -> bool:
        return (await stack.junction.status())["config"]["last_error"] is not None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not await rejected():
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    after = await stack.junction.status()
    error = after["config"]["last_error"]["message"]
    assert "route.cluster.web-api-go.weight: must be an integer 0..100" in error
    assert str(stack.config_path) in error
    assert after["snapshot"]["version"] == before["snapshot"]["version"]  # nothing pushed
    # The last good 90/10 split still serves: Envoy's route has those weights...
    assert await route_weights(stack.junction) == {"web-api-perl": 90, "web-api-go": 10}
    # ...and traffic follows them (10% of 1000: mean 100, sd ~9.5; five sd either side; the
    # rejected 110/90 would send ~55% to web-api-go).
    tally = await drive(stack.listener, "/api/x", count=1000, concurrency=16)
    assert tally.failures == 0, tally
    assert 52 <= tally.services["web-api-go"] <= 148, tally.services
    assert tally.services["web-api-perl"] == 1000 - tally.services["web-api-go"]
    # Fixing it clears the error.
    stack.write_config(CONFIG.format(listener=stack.listener))
    while (await stack.junction.status())["config"]["last_error"] is not None:
        assert loop.time() < deadline + 5
        await asyncio.sleep(0.05)


async def route_weights(junction: Junction) -> dict[str, int]:
    """The weighted clusters of Envoy's /api route, from its admin config dump."""
    dump = json.loads(await junction.envoy_admin("/config_dump?resource=dynamic_route_configs"))
    weights: dict[str, int] = {}
    for config in dump["configs"]:
        for vhost in config["route_config"].get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                if route["match"].get("prefix") != "/api":
                    continue
                for c in route["route"].get("weighted_clusters", {}).get("clusters", []):
                    weights[c["name"]] = int(c["weight"])
    return weights


async def test_moving_a_prefix_to_a_new_cluster_is_make_before_break(stack: Stack) -> None:
    """Carve /api/foobar out to web-asset under load: no 503 while the route moves."""
    stop = asyncio.Event()
    background = Tally()
    load = asyncio.create_task(
        drive(
            stack.listener, "/api/foobar", count=100_000, duration=30, stop=stop, tally=background
        )
    )
    try:
        carved = CONFIG.format(listener=stack.listener).replace(
            'web-asset:    {prefix: ["/asset"], weight: 100}',
            'web-asset:    {prefix: ["/asset", "/api/foobar"], weight: 100}',
        )
        stack.write_config(carved)
        await eventually(lambda: background.services["web-asset"] > 20, timeout=5)
    finally:
        stop.set()
        await load
    assert background.failures == 0, (background.statuses, background.errors[:3])


async def test_healthz_ok_maintenance_and_no_healthy_host(tmp_path: Path) -> None:
    listener = free_port()
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listener: {{listen: {{address: 127.0.0.1, port: {listener}}}}}\n"
        "route: {domain: [example.com], cluster: {web-api-go: {prefix: [/]}}}\n"
        "cluster: {loadbalancer: {web-api-go: {}}}\n"
    )
    instances = tmp_path / "instances.yaml"
    instances.write_text(f"services: {{web-api-go: [{{address: 127.0.0.1, port: {port}}}]}}\n")
    maintenance = tmp_path / "maintenance"
    async with (
        upstreams([("web-api-go", port)]),
        junction_up(
            tmp_path, config, instances, listener_port=listener,
            extra=["--maintenance-file", str(maintenance)],
        ) as junction,
    ):  # fmt: skip
        await junction.wait_acked()
        await eventually_status(junction, 200)
        assert await junction.healthz() == (200, "OK\n")
        maintenance.write_text("")
        assert await junction.healthz() == (599, "MAINTENANCE\n")
        maintenance.unlink()
        instances.write_text(
            f"services: {{web-api-go: [{{address: 127.0.0.1, port: {port}, status: critical}}]}}\n"
        )
        _, body = await eventually_status(junction, 503)
        assert "cluster web-api-go has no healthy host" in body


async def eventually_status(
    junction: Junction, code: int, timeout: float = 10, containing: str = ""
) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await junction.healthz()
        if got[0] == code and containing in got[1]:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"/healthz stayed {got}, wanted {code}\n{junction.log()}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_envoy_nack_is_recorded_and_previous_version_stays(
    tmp_path: Path, variant: str
) -> None:
    """A listener port Envoy cannot bind passes our checks but Envoy rejects it (NACK)."""
    listener = free_port()
    port = free_port()
    config = tmp_path / "config.yaml"
    body = (
        "route: {domain: [example.com], cluster: {web-api-go: {prefix: [/]}}}\n"
        "cluster: {loadbalancer: {web-api-go: {}}}\n"
    )
    config.write_text(f"listener: {{listen: {{address: 127.0.0.1, port: {listener}}}}}\n{body}")
    instances = tmp_path / "instances.yaml"
    instances.write_text(f"services: {{web-api-go: [{{address: 127.0.0.1, port: {port}}}]}}\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        async with (
            upstreams([("web-api-go", port)]),
            junction_up(
                tmp_path, config, instances, listener_port=listener,
                extra=["--delta"] if variant == "delta" else [],
            ) as junction,
        ):  # fmt: skip
            await junction.wait_acked()
            await eventually_status(junction, 200)
            streams = (await junction.status())["nodes"][0]["streams"]
            assert streams == [f"{variant}/ads"], streams
            busy_port = busy.getsockname()[1]
            config.write_text(
                f"listener: {{listen: {{address: 127.0.0.1, port: {busy_port}}}}}\n{body}"
            )
            _, text = await eventually_status(junction, 503, containing="NACKed")
            assert "Listener version" in text, text
            status = await junction.status()
            (node,) = status["nodes"]
            nack = node["types"]["Listener"]["nack"]
            assert str(busy_port) in nack["error_detail"], nack
            assert nack["origin"] == str(config)
            # The old listener still serves.
            tally = await drive(listener, "/x", count=20)
            assert tally.services == {"web-api-go": 20}
            # Nothing is resent in a loop: the NACK count stays put.
            publishes = status["snapshot"]["publishes"]
            await asyncio.sleep(1)
            again = await junction.status()
            assert again["snapshot"]["publishes"] == publishes
            assert again["nodes"][0]["types"]["Listener"]["nack"]["nonce"] == nack["nonce"]
    finally:
        busy.close()


async def test_sigterm_stops_envoy_too(tmp_path: Path) -> None:
    listener = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listener: {{listen: {{address: 127.0.0.1, port: {listener}}}}}\n"
        "route: {domain: [example.com], cluster: {web-api-go: {prefix: [/]}}}\n"
        "cluster: {loadbalancer: {web-api-go: {}}}\n"
    )
    instances = tmp_path / "instances.yaml"
    instances.write_text("services: {}\n")
    async with junction_up(tmp_path, config, instances, listener_port=listener) as junction:
        await junction.wait_acked()
        admin = (await junction.status())["envoy_admin"]
        server_info = await junction.envoy_admin("/server_info")
        assert "LIVE" in server_info
        junction.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(junction.proc.wait(), 15) == 0
    # Envoy's admin port is gone with it: no orphan.
    host, port = admin.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


async def test_sigkill_leaves_no_orphan_envoy(tmp_path: Path) -> None:
    """Even killed outright, `junction up` takes its Envoy with it.

    Two mechanisms make it so: the parent-death signal junction sets, and (observed) the
    wheel's Envoy exiting with its parent by itself; this checks the outcome, not which.
    """
    listener = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listener: {{listen: {{address: 127.0.0.1, port: {listener}}}}}\n"
        "route: {domain: [example.com], cluster: {web-api-go: {prefix: [/]}}}\n"
        "cluster: {loadbalancer: {web-api-go: {}}}\n"
    )
    instances = tmp_path / "instances.yaml"
    instances.write_text("services: {}\n")
    async with junction_up(tmp_path, config, instances, listener_port=listener) as junction:
        await junction.wait_acked()
        host, port = (await junction.status())["envoy_admin"].rsplit(":", 1)
        junction.proc.kill()
        await junction.proc.wait()

    def envoy_gone() -> bool:
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
        except OSError:
            return True
        return False

    await eventually(envoy_gone, timeout=10)
