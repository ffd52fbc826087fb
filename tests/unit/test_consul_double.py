"""ConsulDouble, driven by py-consul (the client Junction uses), behaves as Consul documents.

If these pass against the double but would not against Consul, the double lies; so each
test states the documented behaviour it checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import consul
import consul.aio
import pytest
from consul_double import ConsulDouble

# py-consul 1.8 passes arguments aiohttp deprecates; that is py-consul's business.
pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

WAIT = 5.0  # bound on every await below; the double answers in milliseconds


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble(node_meta={"zone": "zone-a", "region": "r1"}) as d:
        yield d


@pytest.fixture
async def client(double: ConsulDouble) -> AsyncIterator[consul.aio.Consul]:
    c = consul.aio.Consul(host="127.0.0.1", port=double.port)
    try:
        yield c
    finally:
        await c.close()


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, WAIT)


def by_id(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["CheckID"]: c for c in checks}


# --------------------------------------------------------------------------- KV


async def test_kv_put_get_delete_and_the_index_only_goes_up(client: consul.aio.Consul) -> None:
    index0, missing = await bounded(client.kv.get("junction/config"))
    assert missing is None and int(index0) >= 1  # 404 still carries an index, never 0

    assert await bounded(client.kv.put("junction/config", "a: 1")) is True
    index1, entry = await bounded(client.kv.get("junction/config"))
    assert entry["Value"] == b"a: 1"
    assert int(index1) == entry["ModifyIndex"] == entry["CreateIndex"] > int(index0)

    assert await bounded(client.kv.put("junction/config", "a: 2")) is True
    index2, entry = await bounded(client.kv.get("junction/config"))
    assert entry["Value"] == b"a: 2" and entry["CreateIndex"] == int(index1)
    assert int(index2) == entry["ModifyIndex"] > int(index1)

    assert await bounded(client.kv.delete("junction/config")) is True
    index3, gone = await bounded(client.kv.get("junction/config"))
    # The tombstone keeps a deleted key's index from going backwards (so watchers wake).
    assert gone is None and int(index3) > int(index2)


async def test_kv_cas_flags_binary_and_recurse(client: consul.aio.Consul) -> None:
    assert await bounded(client.kv.put("k", b"\xff\xfe", flags=7, cas=0)) is True
    assert await bounded(client.kv.put("k", b"again", cas=0)) is False  # cas=0: only if absent
    _, entry = await bounded(client.kv.get("k"))
    assert (entry["Value"], entry["Flags"]) == (b"\xff\xfe", 7)
    assert await bounded(client.kv.put("k", b"x", cas=entry["ModifyIndex"] + 1)) is False
    assert await bounded(client.kv.put("k", b"x", cas=entry["ModifyIndex"])) is True
    assert await bounded(client.kv.delete("k", cas=0)) is False  # a 0 index never deletes

    await bounded(client.kv.put("app/a", "1"))
    await bounded(client.kv.put("app/sub/b", "2"))
    _, entries = await bounded(client.kv.get("app/", recurse=True))
    assert [e["Key"] for e in entries] == ["app/a", "app/sub/b"]
    _, keys = await bounded(client.kv.get("app/", keys=True, separator="/"))
    assert keys == ["app/a", "app/sub/"]
    assert await bounded(client.kv.delete("app/", recurse=True)) is True
    _, entries = await bounded(client.kv.get("app/", recurse=True))
    assert entries is None


async def test_the_sync_client_reads_raw_values_and_empty_ones(double: ConsulDouble) -> None:
    def work() -> tuple[Any, ...]:
        with consul.Consul(host="127.0.0.1", port=double.port) as c:
            c.kv.put("raw", "plain text")
            c.kv.put("empty", None)
            _, empty = c.kv.get("empty")
            raw = c.http.get(lambda r: (r.code, r.body), "/v1/kv/raw", params=[("raw", "1")])
            return empty["Value"], raw

    empty, raw = await bounded(asyncio.to_thread(work))
    assert empty is None  # Consul stores an empty body as a null value
    assert raw == (200, "plain text")


async def test_a_blocking_query_returns_on_change(client: consul.aio.Consul) -> None:
    await bounded(client.kv.put("watched", "v1"))
    index, _ = await bounded(client.kv.get("watched"))
    blocked = asyncio.create_task(client.kv.get("watched", index=index, wait="30s"))
    await asyncio.sleep(0.1)
    assert not blocked.done()  # held: nothing changed yet
    await bounded(client.kv.put("other", "x"))  # another key does not answer this query
    await asyncio.sleep(0.1)
    assert not blocked.done()
    await bounded(client.kv.put("watched", "v2"))
    new_index, entry = await bounded(blocked)
    assert int(new_index) > int(index) and entry["Value"] == b"v2"


async def test_a_blocking_query_times_out_with_the_same_index(
    client: consul.aio.Consul,
) -> None:
    await bounded(client.kv.put("quiet", "v1"))
    index, _ = await bounded(client.kv.get("quiet"))
    same_index, entry = await bounded(client.kv.get("quiet", index=index, wait="200ms"))
    assert same_index == index and entry["Value"] == b"v1"


async def test_a_blocking_query_on_a_missing_key_returns_when_it_is_created(
    client: consul.aio.Consul,
) -> None:
    index, missing = await bounded(client.kv.get("later"))
    assert missing is None
    blocked = asyncio.create_task(client.kv.get("later", index=index, wait="30s"))
    await asyncio.sleep(0.05)
    await bounded(client.kv.put("later", "now"))
    new_index, entry = await bounded(blocked)
    assert int(new_index) > int(index) and entry["Value"] == b"now"


async def test_bad_blocking_parameters_are_refused(double: ConsulDouble) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"http://{double.address}/v1/kv/x"
        async with http.get(url, params={"index": "abc"}) as resp:
            assert (resp.status, await resp.text()) == (400, "Invalid index")
        async with http.get(url, params={"index": "1", "wait": "soon"}) as resp:
            assert (resp.status, await resp.text()) == (400, "Invalid wait time")
        async with http.get(f"http://{double.address}/v1/health/service/x?filter=a") as resp:
            assert resp.status == 400  # not silently unfiltered


# ---------------------------------------------------------------- health, agent


async def test_health_lists_instances_with_node_and_service_checks(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    assert await bounded(
        client.agent.service.register(
            "web", service_id="web-1", address="10.0.0.1", port=8080, tags=["v1"],
            meta={"zone": "zone-b"}, check=consul.Check.ttl("30s"),
        )
    )  # fmt: skip
    _, entries = await bounded(client.health.service("web"))
    [entry] = entries
    assert entry["Node"]["Node"] == double.node
    assert entry["Node"]["Meta"] == {"zone": "zone-a", "region": "r1"}
    assert {k: entry["Service"][k] for k in ("ID", "Service", "Address", "Port", "Tags", "Meta")} == {
        "ID": "web-1", "Service": "web", "Address": "10.0.0.1", "Port": 8080,
        "Tags": ["v1"], "Meta": {"zone": "zone-b"},
    }  # fmt: skip
    checks = by_id(entry["Checks"])
    assert checks["serfHealth"]["Status"] == "passing" and checks["serfHealth"]["ServiceID"] == ""
    # A TTL check starts critical until its TTL is first reported.
    assert checks["service:web-1"]["Status"] == "critical"
    assert checks["service:web-1"]["Name"] == "Service 'web' check"

    _, passing = await bounded(client.health.service("web", passing=True))
    assert passing == []
    assert await bounded(client.agent.check.ttl_warn("service:web-1", "slow"))
    _, entries = await bounded(client.health.service("web"))
    assert by_id(entries[0]["Checks"])["service:web-1"]["Output"] == "slow"
    _, passing = await bounded(client.health.service("web", passing=True))
    assert passing == []  # warning is not passing
    assert await bounded(client.agent.check.ttl_pass("service:web-1"))
    _, passing = await bounded(client.health.service("web", passing=True))
    assert [e["Service"]["ID"] for e in passing] == ["web-1"]
    assert await bounded(client.agent.check.ttl_pass("no-such-check")) is False  # 404


async def test_health_blocking_query_wakes_on_a_check_change_only_for_its_service(
    client: consul.aio.Consul,
) -> None:
    ttl = consul.Check.ttl("30s")
    await bounded(client.agent.service.register("web", service_id="w", port=1, check=ttl))
    await bounded(client.agent.service.register("db", service_id="d", port=2, check=ttl))
    index, _ = await bounded(client.health.service("web"))
    blocked = asyncio.create_task(client.health.service("web", index=index, wait="30s"))
    await bounded(client.agent.check.ttl_pass("service:d"))  # another service
    await asyncio.sleep(0.1)
    assert not blocked.done()
    await bounded(client.agent.check.ttl_pass("service:w"))
    new_index, entries = await bounded(blocked)
    assert int(new_index) > int(index)
    assert by_id(entries[0]["Checks"])["service:w"]["Status"] == "passing"


async def test_an_idempotent_write_does_not_wake_watchers(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    ttl = consul.Check.ttl("30s")
    await bounded(client.agent.service.register("web", service_id="w", port=1, check=ttl))
    await bounded(client.agent.check.ttl_pass("service:w"))
    index, _ = await bounded(client.health.service("web"))
    await bounded(client.agent.check.ttl_pass("service:w"))  # same status, same output
    again, _ = await bounded(client.health.service("web", index=index, wait="200ms"))
    assert again == index


async def test_ttl_checks_expire_to_critical(client: consul.aio.Consul) -> None:
    check = consul.Check.ttl("100ms")
    await bounded(client.agent.service.register("web", service_id="w", port=1, check=check))
    await bounded(client.agent.check.ttl_pass("service:w"))

    async def status() -> tuple[str, str]:
        checks = await bounded(client.agent.checks())
        return checks["service:w"]["Status"], checks["service:w"]["Output"]

    assert (await status())[0] == "passing"
    for _ in range(100):  # bounded poll: the TTL is 100 ms
        if await status() == ("critical", "TTL expired"):
            break
        await asyncio.sleep(0.05)
    assert await status() == ("critical", "TTL expired")


async def test_service_maintenance_adds_and_removes_the_critical_check(
    client: consul.aio.Consul,
) -> None:
    ttl = consul.Check.ttl("30s")
    await bounded(client.agent.service.register("web", service_id="web-1", port=1, check=ttl))
    index, _ = await bounded(client.health.service("web"))
    blocked = asyncio.create_task(client.health.service("web", index=index, wait="30s"))
    assert await bounded(client.agent.service.maintenance("web-1", True, "deploy"))
    _, entries = await bounded(blocked)
    check = by_id(entries[0]["Checks"])["_service_maintenance:web-1"]
    assert {k: check[k] for k in ("Name", "Status", "Notes", "ServiceID", "ServiceName", "Type")} == {
        "Name": "Service Maintenance Mode", "Status": "critical", "Notes": "deploy",
        "ServiceID": "web-1", "ServiceName": "web", "Type": "maintenance",
    }  # fmt: skip
    assert "_service_maintenance:web-1" in await bounded(client.agent.checks())

    assert await bounded(client.agent.service.maintenance("web-1", False))
    _, entries = await bounded(client.health.service("web"))
    assert "_service_maintenance:web-1" not in by_id(entries[0]["Checks"])
    # Consul answers 404 for a service the agent does not know; py-consul says False.
    assert await bounded(client.agent.service.maintenance("nope", True)) is False


async def test_node_maintenance_marks_every_service_of_the_node(
    client: consul.aio.Consul,
) -> None:
    await bounded(client.agent.service.register("web", service_id="w", port=1))
    await bounded(client.agent.service.register("db", service_id="d", port=2))
    assert await bounded(client.agent.maintenance(True))
    for name in ("web", "db"):
        _, entries = await bounded(client.health.service(name))
        check = by_id(entries[0]["Checks"])["_node_maintenance"]
        assert (check["Name"], check["Status"], check["ServiceID"], check["Type"]) == (
            "Node Maintenance Mode", "critical", "", "maintenance",
        )  # fmt: skip
        assert check["Notes"].startswith("Maintenance mode is enabled for this node")
    assert await bounded(client.agent.maintenance(False))
    _, entries = await bounded(client.health.service("web"))
    assert "_node_maintenance" not in by_id(entries[0]["Checks"])


async def test_agent_refuses_checks_it_would_have_to_run(client: consul.aio.Consul) -> None:
    check = consul.Check.http("http://127.0.0.1:1/", "10s")
    with pytest.raises(consul.ConsulException, match="TTL"):
        await bounded(client.agent.service.register("web", port=1, check=check))
    assert await bounded(client.agent.services()) == {}  # a rejected registration: no change


# ---------------------------------------------------------------------- catalog


async def test_catalog_register_and_deregister(client: consul.aio.Consul) -> None:
    index0, none = await bounded(client.health.service("api"))
    assert none == []
    service = {"Service": "api", "ID": "api-1", "Port": 9000, "Address": "10.1.0.1"}
    check = {"CheckID": "api-alive", "Name": "alive", "Status": "warning", "ServiceID": "api-1"}
    assert await bounded(client.catalog.register("n2", "10.1.0.9", service=service, check=check))
    index1, entries = await bounded(client.health.service("api"))
    assert int(index1) > int(index0)
    [entry] = entries
    assert (entry["Node"]["Node"], entry["Node"]["Address"]) == ("n2", "10.1.0.9")
    assert [(c["CheckID"], c["Status"]) for c in entry["Checks"]] == [("api-alive", "warning")]
    _, services = await bounded(client.catalog.services())
    assert set(services) == {"api", "consul"}

    assert await bounded(client.catalog.deregister("n2", service_id="api-1"))
    index2, entries = await bounded(client.health.service("api"))
    assert entries == [] and int(index2) > int(index1)  # the extinction index moved on
    assert await bounded(client.catalog.deregister("n2"))
    _, nodes = await bounded(client.catalog.nodes())
    assert [n["Node"] for n in nodes] == ["consul-double"]


async def test_catalog_register_helper_takes_node_meta(double: ConsulDouble) -> None:
    # py-consul sends node_meta as query parameters; Consul's register endpoint documents
    # NodeMeta in the JSON body, which is what the helper (and the double) takes.
    double.catalog_register(
        {"Node": "n3", "Address": "10.2.0.1", "NodeMeta": {"zone": "z9"},
         "Service": {"Service": "api", "Port": 1}}
    )  # fmt: skip
    async with consul.aio.Consul(host="127.0.0.1", port=double.port) as c:
        _, entries = await bounded(c.health.service("api"))
    assert entries[0]["Node"]["Meta"] == {"zone": "z9"}
    assert entries[0]["Service"]["ID"] == "api"  # ID defaults to the service name


# ------------------------------------------------------------------- failures


async def test_restore_makes_the_index_go_backwards(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    await bounded(client.kv.put("k", "old"))
    old = double.snapshot()
    await bounded(client.kv.put("k", "new"))
    index, _ = await bounded(client.kv.get("k"))
    blocked = asyncio.create_task(client.kv.get("k", index=index, wait="30s"))
    await asyncio.sleep(0.05)
    double.restore(old)
    restored_index, entry = await bounded(blocked)  # returns at once, like a raft restore
    assert int(restored_index) < int(index) and entry["Value"] == b"old"


async def test_stop_and_start_serving_on_the_same_port(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    await bounded(client.kv.put("k", "v"))
    port = double.port
    index, _ = await bounded(client.kv.get("k"))
    blocked = asyncio.create_task(client.kv.get("k", index=index, wait="30s"))
    await asyncio.sleep(0.05)
    await bounded(double.stop_serving())
    with pytest.raises(aiohttp.ClientError):
        await bounded(blocked)  # an in-flight blocking query is dropped
    with pytest.raises(aiohttp.ClientConnectorError):
        await bounded(client.kv.get("k"))
    await bounded(double.start_serving())
    assert double.port == port
    _, entry = await bounded(client.kv.get("k"))
    assert entry["Value"] == b"v"  # state survives


async def test_fail_requests_answers_500_and_counts_requests(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    double.fail_requests()
    with pytest.raises(consul.ConsulException, match="500 No cluster leader"):
        await bounded(client.kv.get("k"))
    assert double.request_count("/v1/kv/") == 1
    double.serve_normally()
    index, _ = await bounded(client.kv.get("k"))
    assert int(index) >= 1
