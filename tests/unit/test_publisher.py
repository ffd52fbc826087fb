"""The publisher: last good config kept, changes coalesced, new clusters wait for instances."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from conftest import eventually

from junction.catalog.model import Health, Instance
from junction.catalog.source import CatalogSource, SourceSink
from junction.xds.publisher import Publisher
from junction.xds.resources import CLUSTER, ENDPOINT, Snapshot

CONFIG = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
"""
GO = (Instance("127.0.0.1", 9001),)
PERL = (Instance("127.0.0.1", 9002), Instance("127.0.0.1", 9003))


class RecordingCache:
    """Stands in for the snapshot cache: records every snapshot handed on."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def set(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


class RecordingCatalog(CatalogSource):
    """Stands in for a catalog source: records the watch sets it is given."""

    origin = "test-catalog"

    def __init__(self) -> None:
        self.watched: list[frozenset[str]] = []

    def watch(self, services: frozenset[str]) -> None:
        self.watched.append(services)

    async def run(self, sink: SourceSink) -> None:
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[None]:
    task = asyncio.create_task(publisher.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def parts() -> tuple[Publisher, RecordingCache, RecordingCatalog]:
    cache, catalog = RecordingCache(), RecordingCatalog()
    return Publisher(cache, catalog, settle=0.01, min_interval=0.1, catalog_grace=1.0), cache, catalog


async def test_publishes_when_config_and_instances_are_known(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, cache, catalog = parts
    async with running(publisher):
        publisher.config_text("c.yaml", CONFIG)
        assert catalog.watched == [frozenset({"web-api-go", "web-api-perl"})]
        publisher.instances("web-api-go", GO)
        await asyncio.sleep(0.3)
        assert cache.snapshots == []  # web-api-perl not reported yet: held (within grace)
        publisher.instances("web-api-perl", PERL)
        await eventually(lambda: len(cache.snapshots) == 1)
    snap = cache.snapshots[0]
    assert set(snap.of_type(CLUSTER)) == {"web-api-go", "web-api-perl"}
    assert len(snap.of_type(ENDPOINT)["web-api-perl"].message.endpoints[0].lb_endpoints) == 2
    assert snap.origin == "c.yaml"
    assert publisher.status()["config"]["last_error"] is None


async def test_missing_instances_published_after_grace(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, cache, _ = parts
    async with running(publisher):
        publisher.config_text("c.yaml", CONFIG)
        publisher.instances("web-api-go", GO)
        await eventually(lambda: len(cache.snapshots) == 1, timeout=5)


async def test_bad_config_keeps_the_last_good_one(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, cache, _ = parts
    async with running(publisher):
        publisher.config_text("c.yaml", CONFIG)
        publisher.instances("web-api-go", GO)
        publisher.instances("web-api-perl", PERL)
        await eventually(lambda: len(cache.snapshots) == 1)
        publisher.config_text("c.yaml", CONFIG.replace("weight: 10", "weight: 1000"))
        await asyncio.sleep(0.3)
    assert len(cache.snapshots) == 1
    error = publisher.status()["config"]["last_error"]
    assert "c.yaml: line 6: route.cluster.web-api-go.weight: must be an integer 0..100" in error["message"]
    assert publisher.status()["sources"]["c.yaml"]["ok"] is False
    assert publisher.config is not None and publisher.config.cluster_names() == ("web-api-go", "web-api-perl")


async def test_reverting_to_the_good_text_clears_the_error(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, _, _ = parts
    publisher.config_text("c.yaml", CONFIG)
    publisher.config_text("c.yaml", "nonsense: [")
    assert publisher.status()["config"]["last_error"] is not None
    publisher.config_text("c.yaml", CONFIG)
    assert publisher.status()["config"]["last_error"] is None
    assert publisher.status()["sources"]["c.yaml"]["ok"] is True


async def test_flapping_instance_is_coalesced(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, cache, _ = parts
    async with running(publisher):
        publisher.config_text("c.yaml", CONFIG)
        publisher.instances("web-api-go", GO)
        publisher.instances("web-api-perl", PERL)
        await eventually(lambda: len(cache.snapshots) == 1)
        flaps = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline and flaps < 400:
            health = Health.UNHEALTHY if flaps % 2 == 0 else Health.HEALTHY
            publisher.instances("web-api-go", (Instance("127.0.0.1", 9001, health=health),))
            flaps += 1
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.3)
    assert flaps > 100
    # At most one publish per min_interval (0.1 s) over ~1.3 s, not one per flap.
    assert 2 <= len(cache.snapshots) <= 16, len(cache.snapshots)
    # The last published state is the last reported one.
    last = cache.snapshots[-1].of_type(ENDPOINT)["web-api-go"].message
    expected = "HEALTHY" if flaps % 2 == 0 else "UNHEALTHY"
    from envoy.config.core.v3 import health_check_pb2

    status = last.endpoints[0].lb_endpoints[0].health_status
    assert health_check_pb2.HealthStatus.Name(status) == expected


async def test_unchanged_rebuild_is_not_published(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, cache, _ = parts
    async with running(publisher):
        publisher.config_text("c.yaml", CONFIG)
        publisher.instances("web-api-go", GO)
        publisher.instances("web-api-perl", PERL)
        await eventually(lambda: len(cache.snapshots) == 1)
        publisher.instances("web-api-go", GO)  # the same list again
        publisher.config_text("c.yaml", CONFIG + "\n")  # same meaning, new text
        await asyncio.sleep(0.3)
    assert len(cache.snapshots) == 1


def test_source_errors_are_shown_until_recovery(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, _, _ = parts
    publisher.source_error("consul:k", "consul 127.0.0.1:1 unreachable")
    assert publisher.status()["sources"]["consul:k"] == {
        "ok": False,
        "error": "consul 127.0.0.1:1 unreachable",
        "since": publisher.status()["sources"]["consul:k"]["since"],
    }
    publisher.source_ok("consul:k")
    assert publisher.status()["sources"]["consul:k"]["ok"] is True


def test_incremental_translation_equals_a_full_translation() -> None:
    from junction.catalog.model import Catalog
    from junction.config.load import load_config
    from junction.xds.incremental import IncrementalTranslator
    from junction.xds.translate import translate

    config = load_config(CONFIG, "c.yaml")
    incremental = IncrementalTranslator()
    catalog = Catalog({"web-api-go": GO, "web-api-perl": PERL})
    steps = [
        catalog,
        catalog.replace("web-api-go", (Instance("127.0.0.1", 9001, health=Health.DRAINING),)),
        catalog.replace("web-api-perl", PERL[:1]),
        catalog.replace("web-api-perl", ()),
        catalog,
    ]
    versions = []
    for step in steps:
        got = incremental.translate(config, step, origin="c.yaml", config_version="v")
        want = translate(config, step, origin="c.yaml", config_version="v")
        assert got.version == want.version
        assert {t: dict(r) for t, r in got.resources.items()} == {
            t: dict(r) for t, r in want.resources.items()
        }
        versions.append(got.version)
    assert len(set(versions)) == 4 and versions[0] == versions[-1]
    # A new config object rebuilds everything that depends on it.
    other = load_config(CONFIG.replace("weight: 10", "weight: 20"), "c.yaml")
    assert incremental.translate(other, catalog).version == translate(other, catalog).version
