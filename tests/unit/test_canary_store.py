"""State stores: the file store, and the Consul store against ConsulDouble (driven by py-consul):
CAS, corrupt values, watching; and CanaryStateSource reporting through them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import eventually
from consul_double import ConsulDouble

from junction.canary.errors import StoreError
from junction.canary.policy import CanaryPolicy
from junction.canary.source import CanaryBoard, CanaryStateSource
from junction.canary.state import CanaryState
from junction.canary.step import initial_state
from junction.canary.store import (
    DEFAULT_PREFIX,
    ConsulStateStore,
    FileStateStore,
    StateStore,
    make_store,
)
from junction.catalog.consul import Backoff, WatchTiming

FAST = WatchTiming(wait=1.0, rate_interval=0.01, backoff=Backoff(0.02, 0.2))
POLICY = CanaryPolicy("web-api", "go", "web-api-perl", "web-api-go", steps=(5, 50, 100))


def fresh(service: str = "web-api", weight: int = 5) -> CanaryState:
    return replace(initial_state(POLICY, 100.0), service=service, weight=weight)


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble() as d:
        yield d


@contextlib.asynccontextmanager
async def store_of(kind: str, tmp_path: Path, double: ConsulDouble) -> AsyncIterator[StateStore]:
    store: StateStore
    if kind == "file":
        store = FileStateStore(tmp_path / "state", poll=0.02, wait=1.0)
    else:
        store = ConsulStateStore(double.address, timing=FAST)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["file", "consul"])
async def test_cas_create_update_and_conflict(
    kind: str, tmp_path: Path, double: ConsulDouble
) -> None:
    async with store_of(kind, tmp_path, double) as store:
        assert await store.get("web-api") is None
        assert await store.put(fresh(weight=5), index=0)
        assert not await store.put(fresh(weight=6), index=0)  # create-only: it exists now
        stored = await store.get("web-api")
        assert stored is not None and stored.state is not None and stored.state.weight == 5
        assert await store.put(fresh(weight=50), index=stored.index)
        # A second writer that read the same index loses (two replicas, one step).
        assert not await store.put(fresh(weight=51), index=stored.index)
        again = await store.get("web-api")
        assert again is not None and again.state is not None and again.state.weight == 50
        assert again.index != stored.index
        assert set(await store.read_all()) == {"web-api"}


async def test_consul_keys_live_under_the_reserved_prefix(double: ConsulDouble) -> None:
    store = ConsulStateStore(double.address, timing=FAST)
    try:
        assert await store.put(fresh(), index=0)
    finally:
        await store.close()
    assert "junction-state/canary/web-api" in double.state._s.kv
    assert DEFAULT_PREFIX == "junction-state/canary/"


@pytest.mark.parametrize("kind", ["file", "consul"])
async def test_a_corrupt_value_is_reported_and_can_be_overwritten(
    kind: str, tmp_path: Path, double: ConsulDouble
) -> None:
    async with store_of(kind, tmp_path, double) as store:
        assert await store.put(fresh("other"), index=0)
        if kind == "file":
            (tmp_path / "state" / "web-api.json").write_text("{not json")
        else:
            double.put_kv("junction-state/canary/web-api", '{"weight": 500}')
        stored = await store.get("web-api")
        assert stored is not None and stored.state is None
        assert stored.problem is not None and "web-api" in stored.problem
        everything = await store.read_all()
        assert everything["other"].state is not None and everything["web-api"].state is None
        assert await store.put(fresh(), index=stored.index)
        repaired = await store.get("web-api")
        assert repaired is not None and repaired.state is not None


async def test_unreachable_consul_is_a_store_error(double: ConsulDouble) -> None:
    store = ConsulStateStore(double.address, timing=FAST)
    await double.stop_serving()
    try:
        with pytest.raises(StoreError, match=r"consul at 127\.0\.0\.1"):
            await store.get("web-api")
        with pytest.raises(StoreError):
            await store.put(fresh(), index=0)
    finally:
        await store.close()


def test_store_selection(tmp_path: Path) -> None:
    assert isinstance(make_store(state_dir=str(tmp_path)), FileStateStore)
    assert isinstance(make_store(consul_addr="127.0.0.1:8500"), ConsulStateStore)
    with pytest.raises(StoreError):
        ConsulStateStore("127.0.0.1:8500", prefix="/bad")


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict[str, int]] = []
        self.errors: list[str] = []
        self.oks = 0

    def canary_states(self, origin: str, states: Mapping[str, CanaryState]) -> None:
        self.reports.append({k: s.weight for k, s in states.items()})

    def source_error(self, origin: str, message: str) -> None:
        self.errors.append(message)

    def source_ok(self, origin: str) -> None:
        self.oks += 1


@pytest.mark.parametrize("kind", ["file", "consul"])
async def test_the_source_reports_changes(kind: str, tmp_path: Path, double: ConsulDouble) -> None:
    async with store_of(kind, tmp_path, double) as store:
        recorder = Recorder()
        board = CanaryBoard(recorder)
        task = asyncio.create_task(CanaryStateSource(store, backoff=Backoff(0.02, 0.1)).run(board))
        try:
            await eventually(lambda: recorder.reports == [{}])
            assert await store.put(fresh(weight=5), index=0)
            await eventually(lambda: recorder.reports[-1] == {"web-api": 5})
            stored = await store.get("web-api")
            assert stored is not None
            assert await store.put(fresh(weight=50), index=stored.index)
            await eventually(lambda: recorder.reports[-1] == {"web-api": 50})
            assert board.states["web-api"].weight == 50
            assert board.status()["services"]["web-api"]["weight"] == 50
            reports = len(recorder.reports)
            await asyncio.sleep(0.2)
            assert len(recorder.reports) == reports  # nothing changed, nothing reported
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_source_survives_consul_going_away(double: ConsulDouble) -> None:
    store = ConsulStateStore(double.address, timing=FAST)
    recorder = Recorder()
    task = asyncio.create_task(CanaryStateSource(store, backoff=Backoff(0.02, 0.1)).run(recorder))
    try:
        await eventually(lambda: recorder.reports == [{}])
        double.fail_requests(500, "No cluster leader")
        await eventually(lambda: len(recorder.errors) == 1)
        assert "No cluster leader" in recorder.errors[0]
        double.serve_normally()
        double.put_kv("junction-state/canary/web-api", fresh(weight=50).dumps())
        await eventually(lambda: recorder.reports[-1] == {"web-api": 50})
        assert recorder.oks == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
