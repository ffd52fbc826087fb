"""The controller: windows + a pure step + CAS writes. A stopped controller resumes from the
store; two replicas never both step; the HTTP API's commands go through the same store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from junction.als.envoy_drops import EnvoyDrops
from junction.als.record import LogRecord
from junction.als.sinks import RotatingFile
from junction.als.windows import Windows
from junction.canary.api import CanaryApi
from junction.canary.controller import CanaryController
from junction.canary.evidence import snap_threshold
from junction.canary.source import CanaryBoard
from junction.canary.state import CanaryState, Phase
from junction.canary.step import CanaryDecision
from junction.canary.store import FileStateStore
from junction.config.load import load_config
from junction.config.model import Config

CONFIG = load_config(
    """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary: {version: go, weight: 10, ramp: {steps: [10, 50, 100], interval: 10, min-requests: 20}}
""",
    "c.yaml",
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def traffic(
    windows: Windows,
    clock: Clock,
    *,
    go: int = 10,
    perl: int = 90,
    go_errors: float = 0.0,
    decision: str = "",
) -> None:
    """``go`` and ``perl`` requests ending now; ``go_errors`` of the candidate's fail."""
    t = clock.now - 0.01
    bad = int(go * go_errors)

    def rec(cluster: str, status: int) -> LogRecord:
        return LogRecord(t, "n", "/api", cluster, status, 5.0, False, "GET", "h", "/", decision, "")

    windows.add(
        [rec("web-api-go", 500 if i < bad else 200) for i in range(go)]
        + [rec("web-api-perl", 200) for _ in range(perl)]
    )


async def seconds(
    c: CanaryController, windows: Windows, clock: Clock, n: int, **kw: Any
) -> list[CanaryDecision]:
    """``n`` seconds of traffic split as the stored weight says, one controller tick each."""
    made: list[CanaryDecision] = []
    for _ in range(n):
        stored = await c.store.get("web-api")
        w = stored.state.weight if stored is not None and stored.state is not None else 10
        traffic(windows, clock, go=w, perl=100 - w, **kw)
        clock.now += 1
        made += await c.tick()
    return made


def make(
    tmp_path: Path, clock: Clock, windows: Windows | None = None, config: Config | None = CONFIG
) -> CanaryController:
    return CanaryController(
        FileStateStore(tmp_path / "state"),
        windows or Windows(clock=clock),
        lambda: config,
        clock=clock,
        events_file=RotatingFile(str(tmp_path / "events.jsonl")),
    )


async def weight(c: CanaryController) -> tuple[int, Phase]:
    stored = await c.store.get("web-api")
    assert stored is not None and stored.state is not None
    return stored.state.weight, stored.state.phase


async def test_ramps_to_100_and_resumes_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    c = make(tmp_path, clock, windows)
    await c.tick()
    assert await weight(c) == (10, Phase.RAMPING)
    assert await seconds(c, windows, clock, 5) == []
    assert await weight(c) == (10, Phase.RAMPING)  # interval not over
    [decision] = await seconds(c, windows, clock, 6)
    assert decision.action == "promote" and await weight(c) == (50, Phase.RAMPING)
    # The new step's latency thresholds: fixed from the baseline's 5 ms requests.
    stored = await c.store.get("web-api")
    assert stored is not None and stored.state is not None
    assert stored.state.thresholds_ms == (snap_threshold(5.0),) * 3

    # The controller process dies; a new one (fresh windows) resumes at the stored step.
    windows2 = Windows(clock=clock)
    c2 = make(tmp_path, clock, windows2)
    made = await seconds(c2, windows2, clock, 14)
    assert [d.action for d in made] == ["promote"]
    assert await weight(c2) == (100, Phase.PROMOTED)
    events = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert [e["action"] for e in events] == ["start", "promote", "promote"]
    facts = events[1]["evidence"]
    assert facts["candidate"]["requests"] >= 20 and facts["baseline"]["cluster"] == "web-api-perl"
    assert facts["tests"]["rollback_e"] < 20 and facts["share"]["configured"] == 0.1
    assert c2.status()["latest"]["web-api"]["action"] == "promote"


async def test_rolls_back_a_failing_candidate(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    c = make(tmp_path, clock, windows)
    await c.tick()
    [decision] = await seconds(c, windows, clock, 8, go_errors=0.3)
    assert decision.action == "rollback"
    assert await weight(c) == (0, Phase.ROLLED_BACK)
    stored = await c.store.get("web-api")
    assert stored is not None and stored.state is not None
    assert stored.state.reason.startswith("regression: candidate errors")


async def test_pinned_requests_do_not_count(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    c = make(tmp_path, clock, windows)
    await c.tick()
    assert await seconds(c, windows, clock, 8, go_errors=1.0, decision="pin=go") == []
    assert await weight(c) == (10, Phase.RAMPING)


async def test_tests_are_checkpointed_without_flooding_the_store(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    c = make(tmp_path, clock, windows)
    await c.tick()
    writes = 0
    put = c.store.put

    async def counting_put(state: CanaryState, *, index: int) -> bool:
        nonlocal writes
        writes += 1
        return await put(state, index=index)

    c.store.put = counting_put  # type: ignore[method-assign]
    await seconds(c, windows, clock, 9)
    # Thresholds fixed, the tests' first state, one checkpoint: not one write per tick.
    assert 1 <= writes <= 4
    stored = await c.store.get("web-api")
    assert stored is not None and stored.state is not None and stored.state.stats is not None
    assert stored.state.stats.last_tick is not None


async def test_two_replicas_step_once(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    a, b = make(tmp_path, clock, windows), make(tmp_path, clock, windows)
    await a.tick()
    await b.tick()
    await seconds(a, windows, clock, 9)
    traffic(windows, clock)
    clock.now += 1
    # Both read the same state; only the first write at its index goes through.
    stale = await a.store.get("web-api")
    assert stale is not None
    made_a = await a.tick()

    async def stale_get(service: str) -> object:
        return stale

    b.store.get = stale_get  # type: ignore[method-assign,assignment]
    made_b = await b.tick()
    assert len(made_a) == 1 and made_b == [] and b.lost_races == 1
    assert await weight(a) == (50, Phase.RAMPING)


async def test_envoy_drops_hold_the_promotion(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    c = make(tmp_path, clock, windows)
    drops = EnvoyDrops(windows, lambda: None)
    drops.update(dropped=10, written=100)  # first reading: a baseline
    await c.tick()
    await seconds(c, windows, clock, 3)
    assert drops.update(dropped=13, written=200) == 3
    [decision] = await seconds(c, windows, clock, 9)
    assert decision.action == "inconclusive" and "3 log entries were lost" in decision.reason
    assert drops.update(dropped=0, written=0) == 0  # Envoy restarted: a new baseline


async def test_no_config_or_no_ramp_does_nothing(tmp_path: Path) -> None:
    clock = Clock()
    assert await make(tmp_path, clock, config=None).tick() == []
    assert not (tmp_path / "state").exists()


@pytest.fixture
async def api_client(tmp_path: Path) -> TestClient:  # type: ignore[type-arg]
    store = FileStateStore(tmp_path / "state")
    board = CanaryBoard()
    api = CanaryApi(store, board, lambda: CONFIG)
    app = web.Application()
    api.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_http_commands(api_client: TestClient, tmp_path: Path) -> None:  # type: ignore[type-arg]
    resp = await api_client.post("/canary/web-api/pause")
    assert resp.status == 200
    body = await resp.json()
    assert body["state"]["phase"] == "paused" and body["state"]["weight"] == 10
    resp = await api_client.post("/canary/web-api/pause")
    assert resp.status == 409 and "cannot pause" in (await resp.json())["error"]
    assert (await api_client.post("/canary/web-api/promote")).status == 200
    assert (await api_client.post("/canary/web-api/abort")).status == 200
    resp = await api_client.post("/canary/web-api/resume")
    assert (await resp.json())["state"]["weight"] == 10
    assert (await api_client.post("/canary/nope/pause")).status == 404
    assert (await api_client.post("/canary/web-api/launch")).status == 400
    stored = await FileStateStore(tmp_path / "state").get("web-api")
    assert stored is not None and stored.state is not None
    assert [e.action for e in stored.state.events] == [
        "start",
        "pause",
        "promote",
        "abort",
        "resume",
    ]
    listing = await (await api_client.get("/canary")).json()
    assert listing["services"]["web-api"]["policy"]["steps"] == [10, 50, 100]
    assert (await api_client.get("/canary/nope")).status == 404
