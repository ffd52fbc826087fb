"""Draining one instance, end to end: `junction drain` -> the admin API -> the shared store
-> every replica's EDS -> a real Envoy that stops sending new requests to it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import consul.aio
import pytest
from conftest import until
from consul_double import ConsulDouble
from harness import ROOT, Junction, Tally, drive, free_port, junction_up, upstreams

pytestmark = pytest.mark.slow

CONFIG = """\
listener:
  listen: {{address: 127.0.0.1, port: {listener}}}
  timeout: {{connect: 1, request: 10}}
route: {{domain: [example.com], cluster: {{svc: {{prefix: [/]}}}}}}
cluster: {{loadbalancer: {{svc: {{}}}}}}
"""


async def junction_cli(*args: str) -> tuple[int, str, str]:
    """``python -m junction ARGS`` as a real process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "junction", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def eds_status(clusters: dict[str, Any], port: int) -> str | None:
    """Envoy's EDS health of the svc host on ``port`` (None: no such host)."""
    for cluster in clusters["cluster_statuses"]:
        if cluster["name"] == "svc":
            for host in cluster.get("host_statuses", []):
                if host["address"]["socket_address"]["port_value"] == port:
                    return str(host["health_status"].get("eds_health_status", "HEALTHY"))
    return None


async def wait_eds(junction: Junction, port: int, want: str) -> None:
    await until(
        lambda: junction.envoy_admin("/clusters?format=json"),
        lambda c: eds_status(c, port) == want,
        timeout=15,
    )


@asynccontextmanager
async def replica(tmp: Path, name: str, state: Path, listener: int) -> AsyncIterator[Junction]:
    """One `junction up` (its own Envoy) with config and instances in ``tmp``."""
    home = tmp / name
    home.mkdir(exist_ok=True)
    async with junction_up(
        home, tmp / "config.yaml", tmp / "instances.yaml", listener_port=listener,
        extra=["--state-dir", str(state)],
    ) as junction:  # fmt: skip
        await junction.wait_acked()
        yield junction


async def test_drain_under_load_fails_no_request(tmp_path: Path) -> None:
    a, b, listener = free_port(), free_port(), free_port()
    (tmp_path / "config.yaml").write_text(CONFIG.format(listener=listener))
    (tmp_path / "instances.yaml").write_text(
        "services:\n  svc:\n"
        f"    - {{address: 127.0.0.1, port: {a}, id: svc-a}}\n"
        f"    - {{address: 127.0.0.1, port: {b}, id: svc-b}}\n"
    )
    http = ""
    async with (
        upstreams([("svc", a), ("svc", b)]),
        replica(tmp_path, "one", tmp_path / "state", listener) as junction,
    ):
        http = f"127.0.0.1:{junction.http_port}"
        await until(lambda: drive(listener, "/x", count=40), lambda t: len(t.ports) == 2)
        # Load throughout, and slow requests (2 s) in flight on both instances at the drain.
        stop = asyncio.Event()
        load = Tally()
        background = asyncio.create_task(
            drive(listener, "/x", count=100_000, duration=60, stop=stop, tally=load)
        )
        slow = asyncio.create_task(drive(listener, "/slow?delay=2", count=16, concurrency=16))
        try:
            await asyncio.sleep(0.5)  # let the slow requests reach the upstreams
            code, out, err = await junction_cli(
                "drain", "svc", "svc-a", "--reason", "kernel upgrade", "--http", http
            )
            assert code == 0, err
            assert "draining" in out and f"127.0.0.1:{a}" in out, out
            await wait_eds(junction, a, "DRAINING")
            # No new request reaches a once Envoy has it as DRAINING (give requests that
            # were already routed a moment to finish).
            await asyncio.sleep(0.5)
            before = load.ports[str(a)]
            await until(lambda: asyncio.sleep(0.2, load.ports[str(b)]), lambda n: n > 0)
            mark = load.ports[str(b)]
            await until(lambda: asyncio.sleep(0.2, load.ports[str(b)]), lambda n: n >= mark + 300)
            assert load.ports[str(a)] == before, load.ports
            # Draining b too would leave svc with nothing: refused, saying so.
            code, _, err = await junction_cli("drain", "svc", f"127.0.0.1:{b}", "--http", http)
            assert code == 1
            assert "would leave svc with no healthy instance" in err, err
            assert "--force" in err
        finally:
            stop.set()
            await background
        slow_tally = await slow
        assert slow_tally.statuses == {200: 16}, slow_tally  # in flight: finished
        assert set(slow_tally.ports) == {str(a), str(b)}  # some were on a when it drained
        assert load.failures == 0, (load.statuses, load.errors[:3])
        # /status: the drain, its reason and age.
        status = await junction.status()
        (drain,) = status["drains"]["drains"]
        assert drain["service"] == "svc" and drain["instance"] == "svc-a"
        assert drain["reason"] == "kernel upgrade" and drain["by"] == "operator"
        assert drain["age"] >= 0 and drain["matches"] == [f"127.0.0.1:{a}"]
        assert status["drains"]["store"].startswith("file:")
        # Undo: a takes requests again.
        code, out, err = await junction_cli("drain", "svc", "svc-a", "--undo", "--http", http)
        assert code == 0 and "undrained" in out, err
        await wait_eds(junction, a, "HEALTHY")
        after = await drive(listener, "/x", count=100)
        assert after.failures == 0 and after.ports[str(a)] > 0, after.ports
        code, _, err = await junction_cli("drain", "svc", "svc-a", "--undo", "--http", http)
        assert code == 1 and "not drained" in err
        # --force drains the last healthy instance anyway, and says what it did.
        code, out, err = await junction_cli("drain", "svc", "svc-a", "--http", http)
        assert code == 0, err
        code, out, err = await junction_cli(
            "drain", "svc", f"127.0.0.1:{b}", "--force", "--http", http
        )
        assert code == 0 and "forced" in out, (out, err)
        await wait_eds(junction, b, "DRAINING")
        forced = {d["instance"]: d for d in (await junction.status())["drains"]["drains"]}
        assert forced[f"127.0.0.1:{b}"]["forced"] is True
    # The CLI cannot reach a stopped control plane: exit 2.
    code, _, err = await junction_cli("drain", "svc", "svc-a", "--http", http)
    assert code == 2 and "cannot reach" in err


async def test_every_replica_applies_a_drain_and_it_survives_restarts(tmp_path: Path) -> None:
    a, b, listener1, listener2 = free_port(), free_port(), free_port(), free_port()
    state = tmp_path / "state"
    (tmp_path / "instances.yaml").write_text(
        "services:\n  svc:\n"
        f"    - {{address: 127.0.0.1, port: {a}}}\n"
        f"    - {{address: 127.0.0.1, port: {b}}}\n"
    )
    async with upstreams([("svc", a), ("svc", b)]):
        (tmp_path / "config.yaml").write_text(CONFIG.format(listener=listener1))
        async with replica(tmp_path, "one", state, listener1) as one:
            # A second replica (its own Envoy, its own listener) over the same state dir.
            config2 = tmp_path / "two.yaml"
            config2.write_text(CONFIG.format(listener=listener2))
            home = tmp_path / "two"
            home.mkdir()
            async with junction_up(
                home, config2, tmp_path / "instances.yaml", listener_port=listener2,
                extra=["--state-dir", str(state)],
            ) as two:  # fmt: skip
                await two.wait_acked()
                code, _, err = await junction_cli(
                    "drain", "svc", f"127.0.0.1:{a}", "--reason", "migrate",
                    "--http", f"127.0.0.1:{one.http_port}",
                )  # fmt: skip
                assert code == 0, err
                await wait_eds(one, a, "DRAINING")
                await wait_eds(two, a, "DRAINING")  # applied by the other replica too
                tally = await drive(listener2, "/x", count=100)
                assert tally.ports == {str(b): 100}
        # A fresh control plane on the same state: the drain is there from its first push.
        async with replica(tmp_path, "three", state, listener1) as three:
            clusters = await three.envoy_admin("/clusters?format=json")
            assert eds_status(clusters, a) == "DRAINING"
            status = await three.status()
            assert [d["reason"] for d in status["drains"]["drains"]] == ["migrate"]
    assert os.path.exists(state / "drain" / "drains.json")


async def test_consul_mode_drain_is_shared_through_kv(tmp_path: Path) -> None:
    """Two replicas (each with its own config key and Envoy) over one Consul: a drain by
    service ID through one is a KV key under junction-state/drain/, applied by both."""
    a, b = free_port(), free_port()
    listeners = [free_port(), free_port()]
    async with (
        ConsulDouble() as double,
        upstreams([("svc", a), ("svc", b)]),
    ):
        host, port = double.address.split(":")
        client = consul.aio.Consul(host=host, port=int(port))
        try:
            for i, listener in enumerate(listeners):
                await client.kv.put(f"junction/config-{i}", CONFIG.format(listener=listener))
            await client.agent.service.register(
                "svc", service_id="svc-a", address="127.0.0.1", port=a
            )
            await client.agent.service.register(
                "svc", service_id="svc-b", address="127.0.0.1", port=b
            )
            # The agent registers TTL checks only when asked; no checks: passing.
            homes = [tmp_path / "r0", tmp_path / "r1"]
            for home in homes:
                home.mkdir()
            async with (
                junction_up(homes[0], None, None, listener_port=listeners[0], extra=[
                    "--consul-addr", double.address, "--consul-key", "junction/config-0"]) as one,
                junction_up(homes[1], None, None, listener_port=listeners[1], extra=[
                    "--consul-addr", double.address, "--consul-key", "junction/config-1"]) as two,
            ):  # fmt: skip
                await one.wait_acked()
                await two.wait_acked()
                await wait_eds(one, a, "HEALTHY")
                await wait_eds(two, a, "HEALTHY")
                code, _, err = await junction_cli(
                    "drain", "svc", "svc-a", "--reason", "reboot",
                    "--http", f"127.0.0.1:{one.http_port}",
                )  # fmt: skip
                assert code == 0, err
                _, entry = await client.kv.get("junction-state/drain/svc/svc-a")
                assert entry is not None and b'"reason":"reboot"' in entry["Value"]
                await wait_eds(one, a, "DRAINING")
                await wait_eds(two, a, "DRAINING")
                assert (await two.status())["drains"]["store"] == "consul:junction-state/drain/"
                code, _, err = await junction_cli(
                    "drain", "svc", "svc-a", "--undo", "--http", f"127.0.0.1:{two.http_port}"
                )
                assert code == 0, err
                await wait_eds(one, a, "HEALTHY")
                await wait_eds(two, a, "HEALTHY")
                assert (await client.kv.get("junction-state/drain/svc/svc-a"))[1] is None
        finally:
            await client.close()
