"""The controller: windows + a pure step + CAS writes. A stopped controller resumes from the
store; two replicas never both step; the HTTP API's commands go through the same store."""

from __future__ import annotations

from pathlib import Path

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
from junction.canary.source import CanaryBoard
from junction.canary.state import Phase
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
cluster: {loadbalancer: {web-api-perl: {}, web-api-go: {}}}
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
    windows: Windows, clock: Clock, *, go_errors: float = 0.0, n: int = 50, decision: str = ""
) -> None:
    """``n`` requests to each side ending now; ``go_errors`` of the candidate's fail."""
    t = clock.now - 0.01
    bad = int(n * go_errors)
    windows.add(
        [
            LogRecord(
                t,
                "n",
                "/api",
                "web-api-go",
                500 if i < bad else 200,
                5.0,
                False,
                "GET",
                "h",
                "/",
                decision,
                "",
            )
            for i in range(n)
        ]
        + [
            LogRecord(
                t, "n", "/api", "web-api-perl", 200, 5.0, False, "GET", "h", "/", decision, ""
            )
            for _ in range(n)
        ]
    )


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
    clock.now += 5
    traffic(windows, clock)
    await c.tick()
    assert await weight(c) == (10, Phase.RAMPING)  # interval not over
    clock.now += 6
    traffic(windows, clock)
    [decision] = await c.tick()
    assert decision.action == "promote" and await weight(c) == (50, Phase.RAMPING)

    # The controller process dies; a new one (fresh windows) resumes at the stored step.
    windows2 = Windows(clock=clock)
    c2 = make(tmp_path, clock, windows2)
    clock.now += 11
    [held] = await c2.tick()  # no evidence in its windows yet: inconclusive, held at 50
    assert held.action == "inconclusive"
    assert await weight(c2) == (50, Phase.RAMPING)
    traffic(windows2, clock)
    await c2.tick()
    assert await weight(c2) == (100, Phase.PROMOTED)
    events = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert [e["action"] for e in events] == ["start", "promote", "inconclusive", "promote"]
    assert events[1]["evidence"]["candidate"]["requests"] == 100
    assert events[1]["evidence"]["baseline"]["cluster"] == "web-api-perl"


async def test_rolls_back_a_failing_candidate(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    c = make(tmp_path, clock, windows)
    await c.tick()
    clock.now += 1
    traffic(windows, clock, go_errors=0.2)
    [decision] = await c.tick()
    assert decision.action == "rollback"
    assert await weight(c) == (0, Phase.ROLLED_BACK)
    assert "max-error-rate" in (await c.store.get("web-api")).state.reason  # type: ignore[union-attr]


async def test_pinned_requests_do_not_count(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    c = make(tmp_path, clock, windows)
    await c.tick()
    clock.now += 1
    traffic(windows, clock, go_errors=1.0, decision="pin=go")
    assert await c.tick() == []
    assert await weight(c) == (10, Phase.RAMPING)


async def test_two_replicas_step_once(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(clock=clock)
    a, b = make(tmp_path, clock, windows), make(tmp_path, clock, windows)
    await a.tick()
    await b.tick()
    clock.now += 11
    traffic(windows, clock)
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
    clock.now += 11
    traffic(windows, clock)
    assert drops.update(dropped=13, written=200) == 3
    [decision] = await c.tick()
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
