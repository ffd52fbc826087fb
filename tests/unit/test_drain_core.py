"""Drains: naming instances, refusing harmful drains, the file and Consul stores (the latter
against ConsulDouble, driven by py-consul), DrainingCatalog and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import eventually
from consul_double import ConsulDouble

from junction.catalog.model import Health, Instance
from junction.drain.api import DrainApi
from junction.drain.model import (
    DrainError,
    DrainRecord,
    DrainRefused,
    apply_drains,
    check_drain,
    matches,
)
from junction.drain.source import DrainingCatalog, DrainSource
from junction.drain.store import (
    ConsulDrainStore,
    DrainStore,
    FileDrainStore,
    StoreUnavailable,
    make_drain_store,
)

A = Instance("10.0.0.1", 8080, id="web-1")
B = Instance("10.0.0.2", 8080, id="web-2")
C = Instance("10.0.0.3", 8080, health=Health.UNHEALTHY)
V6 = Instance("::1", 9000)


def test_an_instance_is_named_by_id_or_address_port() -> None:
    assert matches(A, "web-1") and matches(A, "10.0.0.1:8080")
    assert not matches(A, "web-2") and not matches(A, "10.0.0.1:8081")
    assert matches(V6, "[::1]:9000") and not matches(V6, "::1:9000")
    assert not matches(Instance("10.0.0.9", 1), "")  # an instance without id


def test_apply_drains_marks_only_the_named() -> None:
    out = apply_drains((A, B, C), ["10.0.0.2:8080"])
    assert [i.health for i in out] == [Health.HEALTHY, Health.DRAINING, Health.UNHEALTHY]
    assert apply_drains((A, B), []) == (A, B)


def test_check_drain_says_what_happens_and_refuses_harm() -> None:
    effect = check_drain("web", "web-1", (A, B, C), [])
    assert effect == "10.0.0.1:8080 of web takes no new requests; 1 of 3 instances keep serving"
    with pytest.raises(DrainRefused) as info:
        check_drain("web", "web-2", (A, B, C), ["web-1"])
    message = str(info.value)
    assert "would leave web with no healthy instance" in message
    assert "10.0.0.1:8080 DRAINING" in message and "10.0.0.3:8080 UNHEALTHY" in message
    assert "503" in message
    with pytest.raises(DrainRefused, match="no instance of web is 'web-9'"):
        check_drain("web", "web-9", (A, B), [])


def test_check_drain_believes_envoy_about_failing_hosts() -> None:
    """B is healthy in the catalog but Envoy ejected it: A is the last serving host."""
    envoy = {"10.0.0.1:8080": True, "10.0.0.2:8080": False}
    with pytest.raises(DrainRefused) as info:
        check_drain("web", "web-1", (A, B), [], envoy)
    assert "10.0.0.2:8080 failing in Envoy" in str(info.value)
    # Hosts Envoy does not list are judged by the catalog.
    assert "1 of 2" in check_drain("web", "web-1", (A, B), [], {"10.9.9.9:1": False})


@pytest.mark.parametrize(
    "data",
    [[], {"service": "web"}, {"service": "w b", "instance": "x"},
     {"service": "web", "instance": "a/b"}, {"service": "web", "instance": "x", "since": "x"}],
)  # fmt: skip
def test_bad_records_are_refused(data: object) -> None:
    with pytest.raises(DrainError):
        DrainRecord.from_json(data)


def test_record_round_trip() -> None:
    record = DrainRecord("web", "10.0.0.1:8080", "kernel", 12.5, "maintenance-agent", True)
    assert DrainRecord.from_json(record.to_json()) == record


# ---- stores ------------------------------------------------------------------------------


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble() as d:
        yield d


@contextlib.asynccontextmanager
async def store_of(kind: str, tmp_path: Path, double: ConsulDouble) -> AsyncIterator[DrainStore]:
    store: DrainStore
    if kind == "file":
        store = FileDrainStore(tmp_path / "drain", poll=0.02, wait=1.0)
    else:
        store = ConsulDrainStore(double.address, wait=1.0)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["file", "consul"])
async def test_store_put_delete_and_watch(kind: str, tmp_path: Path, double: ConsulDouble) -> None:
    async with store_of(kind, tmp_path, double) as store:
        first = await store.read_all()
        assert first.drains == ()
        record = DrainRecord("web", "10.0.0.1:8080", "kernel", 100.0)
        waiting = asyncio.create_task(store.wait_change(first.index))
        await asyncio.sleep(0.05)
        await store.put(record)
        changed = await asyncio.wait_for(waiting, 5)
        assert changed.drains == (record,)
        again = DrainRecord("web", "10.0.0.1:8080", "other reason", 200.0)
        await store.put(again)  # replaces
        assert (await store.read_all()).drains == (again,)
        assert await store.delete("web", "10.0.0.1:8080") is True
        assert await store.delete("web", "10.0.0.1:8080") is False
        assert (await store.read_all()).drains == ()


async def test_consul_store_keys_and_bad_values(double: ConsulDouble) -> None:
    store = ConsulDrainStore(double.address, wait=1.0)
    try:
        await store.put(DrainRecord("web", "web-1", "r", 1.0))
        double.put_kv("junction-state/drain/web/bad", "{not json")
        double.put_kv("junction-state/drain/web/elsewhere", '{"service": "web", "instance": "x"}')
        stored = await store.read_all()
        assert [d.instance for d in stored.drains] == ["web-1"]
        assert any("junction-state/drain/web/bad: not a drain record" in p for p in stored.problems)
        assert any("stored under another key" in p for p in stored.problems)
    finally:
        await store.close()


async def test_consul_store_unreachable_names_the_address() -> None:
    store = ConsulDrainStore("127.0.0.1:1", wait=0.5)
    try:
        with pytest.raises(StoreUnavailable, match=r"consul at 127\.0\.0\.1:1"):
            await store.put(DrainRecord("web", "web-1"))
    finally:
        await store.close()


def test_file_store_corrupt_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    store = FileDrainStore(tmp_path)
    (tmp_path / "drains.json").write_text('{"drains": [{"service": "web"}, 3]}')
    stored = asyncio.run(store.read_all())
    assert stored.drains == () and len(stored.problems) == 2
    (tmp_path / "drains.json").write_text("[")
    with pytest.raises(StoreUnavailable, match="not a drains file"):
        asyncio.run(store.read_all())
    # A write replaces the unreadable file.
    asyncio.run(store.put(DrainRecord("web", "web-1")))
    assert [d.instance for d in asyncio.run(store.read_all()).drains] == ["web-1"]


def test_make_drain_store(tmp_path: Path) -> None:
    assert isinstance(make_drain_store(consul_addr="127.0.0.1:8500"), ConsulDrainStore)
    store = make_drain_store(consul_addr="127.0.0.1:8500", state_dir=str(tmp_path))
    assert isinstance(store, FileDrainStore)
    # Beside the canary's *.json states, not among them.
    assert store.path == tmp_path / "drain" / "drains.json"


# ---- DrainingCatalog and DrainSource -----------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.reports: dict[str, tuple[Instance, ...]] = {}
        self.errors: list[str] = []

    def config_text(self, origin: str, text: str) -> None: ...

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        self.reports[service] = tuple(instances)

    def source_error(self, origin: str, message: str) -> None:
        self.errors.append(message)

    def source_ok(self, origin: str) -> None: ...


def health(sink: Sink, service: str = "web") -> list[Health]:
    return [i.health for i in sink.reports[service]]


def test_draining_catalog_holds_until_drains_are_known_then_follows_them() -> None:
    sink = Sink()
    catalog = DrainingCatalog(sink)
    catalog.instances("web", (A, B))
    assert sink.reports == {}  # held: a restart must not serve a drained instance
    catalog.drain_records("file:x", [DrainRecord("web", "web-1", "r", 10.0)])
    assert health(sink) == [Health.DRAINING, Health.HEALTHY]
    catalog.instances("web", (A, B, C))
    assert health(sink) == [Health.DRAINING, Health.HEALTHY, Health.UNHEALTHY]
    catalog.drain_records("file:x", [])
    assert health(sink) == [Health.HEALTHY, Health.HEALTHY, Health.UNHEALTHY]
    status = catalog.status(now=25.0)
    assert status == {"store": "file:x", "error": None, "drains": []}
    catalog.drain_records("file:x", [DrainRecord("web", "10.0.0.2:8080", "k", 10.0)])
    (entry,) = catalog.status(now=25.0)["drains"]
    assert entry["age"] == 15.0 and entry["matches"] == ["10.0.0.2:8080"]
    assert entry["reason"] == "k"


def test_release_serves_without_drains_when_the_store_is_unreadable() -> None:
    sink = Sink()
    catalog = DrainingCatalog(sink)
    catalog.instances("web", (A,))
    catalog.release()
    assert health(sink) == [Health.HEALTHY]


async def test_drain_source_reports_changes(tmp_path: Path) -> None:
    store = FileDrainStore(tmp_path, poll=0.02, wait=1.0)
    sink = Sink()
    catalog = DrainingCatalog(sink)
    catalog.instances("web", (A, B))
    task = asyncio.create_task(DrainSource(store).run(catalog))
    try:
        await eventually(lambda: "web" in sink.reports)
        await store.put(DrainRecord("web", "web-2"))
        await eventually(lambda: health(sink) == [Health.HEALTHY, Health.DRAINING])
        (tmp_path / "drains.json").write_text("{")
        await eventually(lambda: catalog.error is not None)
        assert health(sink) == [Health.HEALTHY, Health.DRAINING]  # last good kept
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- HTTP API ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def api_client(
    tmp_path: Path, envoy: dict[str, dict[str, Any]] | None = None
) -> AsyncIterator[tuple[TestClient, DrainingCatalog]]:
    store = FileDrainStore(tmp_path)
    catalog = DrainingCatalog(Sink())
    catalog.instances("web", (A, B))
    catalog.drain_records("file", [])

    async def envoy_hosts() -> dict[str, dict[str, Any]] | None:
        return envoy

    api = DrainApi(store, catalog, envoy_hosts=envoy_hosts, clock=lambda: 50.0)
    app = web.Application()
    api.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client, catalog


async def test_api_drain_refuse_force_undo(tmp_path: Path) -> None:
    async with api_client(tmp_path) as (client, catalog):
        resp = await client.post("/drain/web/web-1", json={"reason": "kernel"})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["drain"]["reason"] == "kernel" and body["drain"]["since"] == 50.0
        assert "1 of 2 instances keep serving" in body["effect"]
        catalog.drain_records("file", [DrainRecord(**body["drain"])])  # as the watch would
        resp = await client.post("/drain/web/10.0.0.2%3A8080")
        assert resp.status == 409
        assert "would leave web with no healthy instance" in (await resp.json())["error"]
        resp = await client.post("/drain/web/10.0.0.2%3A8080?force=true")
        assert resp.status == 200 and (await resp.json())["drain"]["forced"] is True
        resp = await client.post("/drain/web/nobody")
        assert resp.status == 409 and "no instance of web" in (await resp.json())["error"]
        resp = await client.post("/drain/w%20b/x")
        assert resp.status == 400
        resp = await client.post("/drain/web/web-1", data=b"[1]")
        assert resp.status == 400
        resp = await client.delete("/drain/web/web-1")
        assert resp.status == 200
        resp = await client.delete("/drain/web/web-1")
        assert resp.status == 404
        stored = await FileDrainStore(tmp_path).read_all()
        assert [d.instance for d in stored.drains] == ["10.0.0.2:8080"]


async def test_api_refuses_by_envoys_view(tmp_path: Path) -> None:
    envoy = {"web": {"10.0.0.1:8080": {"serving": True}, "10.0.0.2:8080": {"serving": False}}}
    async with api_client(tmp_path, envoy) as (client, _):
        resp = await client.post("/drain/web/web-1")
        assert resp.status == 409
        error = (await resp.json())["error"]
        assert "10.0.0.2:8080 failing in Envoy" in error and "--force" in error
        resp = await client.post("/drain/web/web-2")  # draining the ejected one is fine
        assert resp.status == 200
