"""The Consul sources against ConsulDouble, reporting to a recording sink.

Waits are bounds (``eventually``), never goals; where a test shows that something did NOT
happen, it first waits for the source's next request to the double, so the source had its
chance to misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import warnings
from collections.abc import AsyncIterator
from typing import Any

import consul
import consul.aio
import pytest
from conftest import eventually
from consul_double import ConsulDouble
from fakes import RecordingSink

from junction.catalog.consul import (
    Backoff,
    ConsulCatalog,
    ConsulConfig,
    ConsulSettingError,
    TokenBucket,
    WatchTiming,
    instances_from_entries,
    next_index,
    parse_duration,
)
from junction.catalog.model import Health, Instance
from junction.catalog.source import CatalogSource, ConfigSource

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

KEY = "junction/config"
ORIGIN = f"consul:{KEY}"
FAST = WatchTiming(wait=1.0, rate_interval=0.01, backoff=Backoff(0.02, 0.2))


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble(node="node-a", node_meta={"zone": "zone-a", "region": "r1"}) as d:
        yield d


@pytest.fixture
async def agent(double: ConsulDouble) -> AsyncIterator[consul.aio.Consul]:
    """A py-consul client, as an operator's tooling would use against the agent."""
    client = consul.aio.Consul(host="127.0.0.1", port=double.port)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running(
    source: ConfigSource | CatalogSource, sink: RecordingSink
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def texts(sink: RecordingSink) -> list[str]:
    return [text for _, text in sink.texts]


def count(sink: RecordingSink, kind: str, name: str | None = None) -> int:
    return sum(1 for e in sink.events if e[0] == kind and (name is None or e[1] == name))


async def next_request(double: ConsulDouble, prefix: str) -> None:
    """Wait until the source sends one more request under ``prefix`` than it has so far."""
    seen = double.request_count(prefix)
    await eventually(lambda: double.request_count(prefix) > seen)


async def register(agent: consul.aio.Consul, service_id: str, **kwargs: Any) -> None:
    kwargs.setdefault("check", consul.Check.ttl("300s"))
    assert await asyncio.wait_for(agent.agent.service.register(service_id=service_id, **kwargs), 5)


# ----------------------------------------------------------------- pure parts


def test_next_index_follows_the_blocking_query_rules() -> None:
    assert next_index(0, 17) == 17
    assert next_index(17, 17) == 17  # wait timed out: block again on the same index
    assert next_index(17, 5) == 0  # went backwards: reset and re-read without blocking
    assert next_index(0, 0) == 1  # 0 would never block: busy loop
    assert next_index(3, 0) == 0  # backwards first; the re-read then gets a real index


def test_backoff_is_full_jitter_capped() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0)
    assert [backoff.cap(n) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.delay(3, rand=lambda: 0.5) == pytest.approx(0.4)
    assert backoff.delay(1000, rand=lambda: 0.999) < 5.0


def test_token_bucket_allows_a_burst_of_two_then_paces() -> None:
    now = [0.0]
    bucket = TokenBucket(interval=1.0, burst=2, clock=lambda: now[0])
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(1.0)  # the third read in a row waits a token
    now[0] = 10.0  # quiet for a while: the burst is back, not more
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() > 0


def test_durations_and_settings() -> None:
    assert parse_duration("30s") == 30 and parse_duration("1m30s") == 90
    assert parse_duration("250ms") == pytest.approx(0.25)
    with pytest.raises(ConsulSettingError):
        parse_duration("30")
    with pytest.raises(ConsulSettingError):
        WatchTiming(wait=601)
    with pytest.raises(ConsulSettingError):
        ConsulConfig("127.0.0.1:notaport", KEY)
    with pytest.raises(ConsulSettingError):
        ConsulConfig("127.0.0.1:8500", "/leading/slash")
    assert ConsulCatalog("127.0.0.1:8500", wait="2m").origin == "consul-catalog:127.0.0.1:8500"


def entry(
    address: str = "",
    node_address: str = "10.0.0.9",
    meta: dict[str, str] | None = None,
    node_meta: dict[str, str] | None = None,
    checks: tuple[tuple[str, str], ...] = (),
    **service: Any,
) -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": node_address, "Meta": node_meta},
        "Service": {"ID": "s1", "Service": "web", "Address": address, "Port": 80,
                    "Meta": meta, "Tags": None, **service},
        "Checks": [{"CheckID": c, "Status": s} for c, s in checks],
    }  # fmt: skip


def test_instances_from_entries_maps_consul_fields() -> None:
    (inst,), skipped = instances_from_entries(
        [entry(node_meta={"zone": "z-node", "region": "r-node"}, meta={"zone": "z-svc"})]
    )
    assert skipped == []
    # Service.Address empty: the node's address; service meta wins over node meta per key.
    assert inst == Instance("10.0.0.9", 80, zone="z-svc", region="r-node", node="n1", id="s1")
    (inst,), _ = instances_from_entries(
        [entry("10.0.0.1", Weights={"Passing": 500, "Warning": 1}, Tags=["v2"])]
    )
    assert (inst.address, inst.weight, inst.tags, inst.zone) == ("10.0.0.1", 128, ("v2",), "")
    kept, skipped = instances_from_entries([entry("web-1.internal"), entry("10.0.0.2")])
    assert [i.address for i in kept] == ["10.0.0.2"]
    assert "'web-1.internal', not an IP address" in skipped[0]


@pytest.mark.parametrize(
    ("checks", "health"),
    [
        ((("serfHealth", "passing"), ("service:s1", "passing")), Health.HEALTHY),
        ((("serfHealth", "passing"), ("service:s1", "warning")), Health.DEGRADED),
        ((("serfHealth", "critical"), ("service:s1", "warning")), Health.UNHEALTHY),
        ((("_node_maintenance", "critical"), ("service:s1", "passing")), Health.DRAINING),
        ((("_service_maintenance:s1", "critical"),), Health.DRAINING),
    ],
)
def test_instances_from_entries_health(checks: tuple[tuple[str, str], ...], health: Health) -> None:
    (inst,), _ = instances_from_entries([entry(checks=checks)])
    assert inst.health is health


# --------------------------------------------------------------- ConsulConfig


async def test_config_reports_the_value_then_changes_without_waiting(
    double: ConsulDouble,
) -> None:
    double.put_kv(KEY, "listener: {}\n")
    sink = RecordingSink()
    # A 30 s wait: a change seen well within the 5 s bound came from the blocking query
    # returning on the change, not from a timed-out poll.
    source = ConsulConfig(double.address, KEY, timing=WatchTiming(wait=30.0))
    assert source.origin == ORIGIN
    async with running(source, sink):
        await eventually(lambda: texts(sink) == ["listener: {}\n"])
        # Wait until the source's blocking read (one with ?index) has arrived.
        await eventually(lambda: any("index" in r.query for r in double.requests))
        double.put_kv(KEY, "route: {}\n")
        await eventually(lambda: texts(sink) == ["listener: {}\n", "route: {}\n"])
    assert sink.errors == []


async def test_config_does_not_report_when_nothing_changed(double: ConsulDouble) -> None:
    double.put_kv(KEY, "a: 1\n")
    sink = RecordingSink()
    async with running(ConsulConfig(double.address, KEY, timing=FAST), sink):
        await eventually(lambda: texts(sink) == ["a: 1\n"])
        await next_request(double, "/v1/kv/")
        double.put_kv(KEY, "a: 1\n")  # a new ModifyIndex, the same bytes
        await next_request(double, "/v1/kv/")
        await next_request(double, "/v1/kv/")  # and a wait that timed out
    assert texts(sink) == ["a: 1\n"]


async def test_missing_key_is_an_error_until_it_is_created(double: ConsulDouble) -> None:
    sink = RecordingSink()
    async with running(ConsulConfig(double.address, KEY, timing=FAST), sink):
        await eventually(lambda: sink.errors == [(ORIGIN, f"consul key {KEY} does not exist")])
        await next_request(double, "/v1/kv/")
        double.put_kv(KEY, "a: 1\n")
        await eventually(lambda: texts(sink) == ["a: 1\n"])
    assert sink.events == [("error", ORIGIN), ("ok", ORIGIN), ("config", ORIGIN)]


async def test_invalid_utf8_is_an_error_and_the_last_text_stays(double: ConsulDouble) -> None:
    double.put_kv(KEY, "a: 1\n")
    sink = RecordingSink()
    async with running(ConsulConfig(double.address, KEY, timing=FAST), sink):
        await eventually(lambda: texts(sink) == ["a: 1\n"])
        double.put_kv(KEY, b"a: \xff\n")
        await eventually(lambda: len(sink.errors) == 1)
        assert f"consul key {KEY} is not UTF-8 text (byte 3" in sink.errors[0][1]
        double.delete_kv(KEY)
        await eventually(lambda: len(sink.errors) == 2)
        double.put_kv(KEY, "a: 2\n")
        await eventually(lambda: texts(sink) == ["a: 1\n", "a: 2\n"])
    assert count(sink, "ok") == 1


async def test_config_follows_an_index_that_goes_backwards(double: ConsulDouble) -> None:
    double.put_kv(KEY, "old: 1\n")
    old = double.snapshot()
    double.put_kv(KEY, "new: 1\n")
    sink = RecordingSink()
    async with running(ConsulConfig(double.address, KEY, timing=FAST), sink):
        await eventually(lambda: texts(sink) == ["new: 1\n"])
        await next_request(double, "/v1/kv/")
        double.restore(old)  # e.g. a raft snapshot restored on the servers
        await eventually(lambda: texts(sink) == ["new: 1\n", "old: 1\n"])
        double.put_kv(KEY, "after: 1\n")  # and the loop still sees what comes next
        await eventually(lambda: texts(sink)[-1] == "after: 1\n")


async def test_config_survives_consul_going_away(double: ConsulDouble) -> None:
    double.put_kv(KEY, "a: 1\n")
    sink = RecordingSink()
    async with running(ConsulConfig(double.address, KEY, timing=FAST), sink):
        await eventually(lambda: texts(sink) == ["a: 1\n"])
        await double.stop_serving()
        await eventually(lambda: len(sink.errors) == 1)
        assert sink.errors[0][1].startswith(f"consul at {double.address} ")
        await double.start_serving()
        await eventually(lambda: count(sink, "ok") == 1)
        double.put_kv(KEY, "a: 2\n")
        await eventually(lambda: texts(sink) == ["a: 1\n", "a: 2\n"])
    assert sink.events[:3] == [("config", ORIGIN), ("error", ORIGIN), ("ok", ORIGIN)]


async def test_sources_close_their_http_session(double: ConsulDouble) -> None:
    double.put_kv(KEY, "a: 1\n")
    sink = RecordingSink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        catalog = ConsulCatalog(double.address, timing=FAST)
        catalog.watch(frozenset({"consul"}))
        config = ConsulConfig(double.address, KEY, timing=FAST)
        async with running(config, sink), running(catalog, sink):
            await eventually(lambda: texts(sink) == ["a: 1\n"] and "consul" in sink.services)
        gc.collect()
    unclosed = [w for w in caught if "Unclosed" in str(w.message)]
    assert unclosed == []


# -------------------------------------------------------------- ConsulCatalog


async def test_catalog_reports_instances_with_locality_and_tags(
    double: ConsulDouble, agent: consul.aio.Consul
) -> None:
    # node-a (the agent) has node meta zone-a/r1; one instance overrides the zone.
    await register(agent, "web-1", name="web", address="10.0.0.1", port=80, tags=["v1"])
    await register(agent, "web-2", name="web", address="10.0.0.2", port=80, meta={"zone": "zone-c"})
    double.catalog_register(
        {"Node": "node-b", "Address": "10.0.1.1", "NodeMeta": {"zone": "zone-b", "region": "r2"},
         "Service": {"Service": "web", "ID": "web-3", "Port": 8080}}
    )  # fmt: skip
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"web"}))
    async with running(catalog, sink):
        await eventually(lambda: len(sink.services.get("web", ())) == 3)
    by_address = {i.address: i for i in sink.services["web"]}
    assert by_address["10.0.0.1"] == Instance(
        "10.0.0.1", 80, zone="zone-a", region="r1", health=Health.UNHEALTHY,  # TTL not yet set
        node="node-a", tags=("v1",), id="web-1",
    )  # fmt: skip
    assert (by_address["10.0.0.2"].zone, by_address["10.0.0.2"].region) == ("zone-c", "r1")
    # No service address: the node's; no checks at all on node-b: healthy.
    assert by_address["10.0.1.1"] == Instance(
        "10.0.1.1", 8080, zone="zone-b", region="r2", node="node-b", id="web-3"
    )
    assert sink.errors == []


async def test_catalog_maps_health_including_maintenance(
    double: ConsulDouble, agent: consul.aio.Consul
) -> None:
    for n in range(1, 5):
        await register(agent, f"web-{n}", name="web", address=f"10.0.0.{n}", port=80)
    await agent.agent.check.ttl_pass("service:web-1")
    await agent.agent.check.ttl_warn("service:web-2")
    await agent.agent.check.ttl_fail("service:web-3")
    await agent.agent.check.ttl_pass("service:web-4")
    assert await agent.agent.service.maintenance("web-4", True, "drain before deploy")
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"web"}))

    def health() -> list[Health]:
        return [i.health for i in sorted(sink.services.get("web", ()))]

    async with running(catalog, sink):
        expected = [Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY, Health.DRAINING]
        await eventually(lambda: health() == expected)
        assert await agent.agent.service.maintenance("web-4", False)
        await eventually(lambda: health()[3] is Health.HEALTHY)
        assert await agent.agent.maintenance(True)  # the whole node drains
        await eventually(lambda: set(health()) == {Health.DRAINING})


async def test_catalog_reports_instances_added_and_removed(double: ConsulDouble) -> None:
    def instance(n: int) -> dict[str, Any]:
        return {"Node": f"n{n}", "Address": f"10.0.0.{n}", "Service": {"Service": "api", "Port": 1}}

    double.catalog_register(instance(1))
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"api"}))

    def addresses() -> list[str]:
        return [i.address for i in sink.services.get("api", ())]

    async with running(catalog, sink):
        await eventually(lambda: addresses() == ["10.0.0.1"])
        double.catalog_register(instance(2))
        await eventually(lambda: addresses() == ["10.0.0.1", "10.0.0.2"])
        double.catalog_deregister("n1")
        await eventually(lambda: addresses() == ["10.0.0.2"])
        double.catalog_deregister("n2")
        await eventually(lambda: addresses() == [])  # really empty: reported as such
    assert count(sink, "instances", "api") == 4


async def test_catalog_reports_only_changes_that_matter(double: ConsulDouble) -> None:
    double.catalog_register(
        {"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "api", "Port": 1},
         "Check": {"CheckID": "alive", "Status": "passing", "ServiceID": "api"}}
    )  # fmt: skip
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"api"}))
    async with running(catalog, sink):
        await eventually(lambda: count(sink, "instances", "api") == 1)
        await next_request(double, "/v1/health/service/api")
        # The service's index moves (new check output), its instances do not change.
        double.set_check("alive", "passing", node="n1", output="200 OK in 3 ms")
        await next_request(double, "/v1/health/service/api")
        await next_request(double, "/v1/health/service/api")
        assert count(sink, "instances", "api") == 1
        double.set_check("alive", "critical", node="n1")
        await eventually(lambda: sink.services["api"][0].health is Health.UNHEALTHY)


async def test_watch_starts_and_stops_service_loops(double: ConsulDouble) -> None:
    for name in ("a", "b"):
        double.catalog_register({"Node": "n1", "Address": "10.0.0.1",
                                 "Service": {"Service": name, "Port": 1}})  # fmt: skip
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"a"}))  # before run: remembered
    async with running(catalog, sink):
        await eventually(lambda: "a" in sink.services)
        assert "b" not in sink.services
        catalog.watch(frozenset({"a", "b"}))
        await eventually(lambda: "b" in sink.services)
        catalog.watch(frozenset({"b"}))
        await next_request(double, "/v1/health/service/b")
        a_requests = double.request_count("/v1/health/service/a")
        double.catalog_register({"Node": "n2", "Address": "10.0.0.2",
                                 "Service": {"Service": "a", "Port": 1}})  # fmt: skip
        double.catalog_register({"Node": "n2", "Address": "10.0.0.2",
                                 "Service": {"Service": "b", "Port": 1}})  # fmt: skip
        await eventually(lambda: len(sink.services["b"]) == 2)
        await next_request(double, "/v1/health/service/b")
        assert double.request_count("/v1/health/service/a") == a_requests
        assert len(sink.services["a"]) == 1  # a is no longer watched
        catalog.watch(frozenset({"a", "b"}))  # watched again: reported again
        await eventually(lambda: len(sink.services["a"]) == 2)


async def test_catalog_keeps_instances_while_consul_is_unreachable(
    double: ConsulDouble,
) -> None:
    double.catalog_register({"Node": "n1", "Address": "10.0.0.1",
                             "Service": {"Service": "api", "Port": 1}})  # fmt: skip
    sink = RecordingSink()
    origin = f"consul-catalog:{double.address}"
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"api", "web"}))
    async with running(catalog, sink):
        await eventually(lambda: "api" in sink.services and "web" in sink.services)
        reported = len(sink.events)
        await double.stop_serving()
        await eventually(lambda: len(sink.errors) >= 1)
        await asyncio.sleep(0.3)  # several retries' worth of outage
        double.catalog_register({"Node": "n2", "Address": "10.0.0.2",
                                 "Service": {"Service": "api", "Port": 1}})  # fmt: skip
        outage = sink.events[reported:]
        await double.start_serving()
        await eventually(lambda: ("ok", origin) in sink.events)
        await eventually(lambda: len(sink.services["api"]) == 2)
    # Nothing but errors while Consul was away: no empty list stood in for "unknown".
    assert outage and set(outage) == {("error", origin)}
    # Both loops fail the same way, so messages are not per service; each names the address
    # (the dropped blocking reads first, then refused connections).
    messages = [m for _, m in sink.errors]
    assert all(m.startswith(f"consul at {double.address} ") for m in messages)
    assert all(a != b for a, b in itertools.pairwise(messages))
    assert [e for e in sink.events[reported:] if e[0] == "instances"] == [("instances", "api")]
    assert len(sink.services["web"]) == 0


async def test_catalog_backs_off_while_consul_answers_500(double: ConsulDouble) -> None:
    sink = RecordingSink()
    origin = f"consul-catalog:{double.address}"
    timing = WatchTiming(wait=1.0, rate_interval=0.01, backoff=Backoff(0.05, 0.5))
    catalog = ConsulCatalog(double.address, timing=timing)
    catalog.watch(frozenset({"api"}))
    async with running(catalog, sink):
        await eventually(lambda: "api" in sink.services)
        double.fail_requests(500, "No cluster leader")
        await eventually(lambda: len(sink.errors) == 1)
        assert "500 No cluster leader" in sink.errors[0][1]
        assert double.address in sink.errors[0][1]
        before = double.request_count()
        await asyncio.sleep(1.0)  # the outage window being measured
        during = double.request_count() - before
        double.serve_normally()
        await eventually(lambda: ("ok", origin) in sink.events)
    # Full-jitter backoff capped at 0.5 s: a handful of retries a second (~6 expected),
    # where a busy loop would make thousands. The bound is loose; the point is "bounded".
    assert 1 <= during <= 40
    assert len(sink.errors) == 1  # the same error is not re-reported on every retry
