"""The canary ramp end to end: real Envoy, real upstreams, access logs over gRPC, the
controller, the state store, and route weights (or the decision service) following it.

Short windows: steps of 1.5-4 s and 20 requests per side. The assertions are about what
the controller decided and on what evidence, never about how fast the test ran. A sound
test still rolls back an A/A ramp alpha of the time, so these ramps use alpha 0.001 (the
suite stays deterministic in practice; the benchmark carries the statistical claim).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import until
from harness import ROOT, Junction, Tally, drive, free_port, junction_up, post, upstreams
from test_als_envoy import als_serve, write_stack

pytestmark = pytest.mark.slow

# Each test's own bounds (the ``until`` timeouts, drive durations, process waits) add up to
# more than the suite's default pytest timeout; its mark sits above their sum, so a stuck
# test fails on its own bound, which names what it waited for.
#: A bound on each `junction` subprocess a test runs to completion (report, canary status).
PROCESS_BOUND = 60.0

CONFIG = """\
listener:
  listen: {{protocol: tcp, address: 127.0.0.1, port: {listener}}}
  timeout: {{connect: 1, request: 5}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {{prefix: ["/api"], weight: 90}}
    web-api-go:   {{prefix: ["/api"], weight: 10}}
cluster: {{loadbalancer: {{web-api-perl: {{}}, web-api-go: {{}}}}}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{header: x-junction-version, trust: any}}
    canary:
      version: go
      weight: 10
      ramp:
        steps: {steps}
        interval: {interval}
        min-requests: 20
        alpha: 0.001
# A generous message timeout: on 2 loaded cores the decision worker can miss the 0.2 s
# default, and a pinned request would then fail open onto the plain (rolled-back) route.
decision: {{timeout: 2}}
{experiments}"""

EXPERIMENT = """\
experiments:
  feed:
    service: web-api
    match: {prefix: /api}
    arms: {control: {weight: 50}, treatment: {weight: 50}}
"""


def config(
    listener: int, *, steps: str = "[10, 50, 100]", interval: float = 2.0, experiment: bool = False
) -> str:
    return CONFIG.format(
        listener=listener,
        steps=steps,
        interval=interval,
        experiments=EXPERIMENT if experiment else "",
    )


def canary_of(j: Junction) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def get() -> dict[str, Any]:
        async with j.session.get(f"http://127.0.0.1:{j.http_port}/canary/web-api") as resp:
            body: dict[str, Any] = await resp.json()
            return body

    return get


def phase(body: dict[str, Any]) -> str | None:
    state = body.get("state")
    return state["phase"] if state else None


async def all_on(listener: int, service: str, *, headers: dict[str, str] | None = None) -> Tally:
    """A batch of 100 requests once every one lands on ``service`` (routes converge)."""

    async def batch() -> Tally:
        return await drive(listener, "/api/x", count=100, concurrency=4, headers=headers)

    return await until(batch, lambda t: set(t.services) == {service} and not t.errors)


async def decisions_answered(listener: int) -> None:
    """Until the decision service (started lazily) decides: a pin on the baseline comes
    back tagged with its decision (the demo upstream echoes x-junction-decision)."""

    async def decision() -> str:
        timeout = aiohttp.ClientTimeout(total=10)
        headers = {"Host": "example.com", "x-junction-version": "perl"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://127.0.0.1:{listener}/api/x", headers=headers) as resp,
        ):
            return resp.headers.get("x-echo-x-junction-decision", "")

    await until(decision, lambda d: d == "pin=perl", timeout=60)


@pytest.mark.timeout(420)  # ~60+15+60+60+30+30+60 s of bounds, plus teardown
async def test_a_failing_candidate_is_rolled_back_while_the_baseline_serves(tmp_path: Path) -> None:
    perl, go, listener = free_port(), free_port(), free_port()
    interval = 4.0
    cfg, instances = write_stack(
        tmp_path, config(listener, interval=interval, experiment=True), perl, go
    )
    extra = [
        "--state-dir", str(tmp_path / "state"), "--als-flush-interval", "0.2",
        "--als-log", str(tmp_path / "access.jsonl"), "--extproc-workers", "1",
    ]  # fmt: skip
    async with (
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        junction_up(tmp_path, cfg, instances, listener_port=listener, extra=extra) as j,
    ):
        await j.wait_acked()
        # Until then Envoy fails open: no request would carry a pin or an experiment arm.
        await decisions_answered(listener)
        await post(f"http://127.0.0.1:{go}/_control?error_rate=0.2")
        tally, stop = Tally(), asyncio.Event()
        traffic = asyncio.create_task(
            drive(
                listener, "/api/x", count=10**6, concurrency=4, duration=60, stop=stop, tally=tally
            )
        )
        try:
            body = await until(canary_of(j), lambda b: phase(b) == "rolled_back", timeout=50)
        finally:
            stop.set()
            await traffic
        events = body["events"]
        rollback = events[-1]
        assert rollback["action"] == "rollback" and rollback["from_weight"] == 10
        assert rollback["to_weight"] == 0 and body["state"]["weight"] == 0
        assert "promote" not in [e["action"] for e in events]
        evidence = rollback["evidence"]
        # Decided within two intervals of the step's start, on the candidate's counts, by
        # the anytime-valid test reaching 1/alpha. That test covers the whole ramp (the
        # step's own counts start over after a sample-ratio or lost-log hold), so the
        # candidate's failures are read from the ramp's totals.
        assert evidence["end"] - evidence["start"] <= 2 * interval
        assert evidence["candidate"]["cluster"] == "web-api-go"
        ramp = evidence["ramp_candidate"]
        assert ramp["requests"] > 0 and ramp["errors"] / ramp["requests"] > 0.05, evidence
        assert evidence["tests"]["rollback_e"] >= 1000 and evidence["tests"]["anytime_p"] <= 0.001
        assert rollback["reason"].startswith("regression: ")
        # The baseline kept serving throughout: every failure came from the candidate.
        assert tally.errors == []
        assert set(tally.statuses) <= {200, 500}
        # After the rollback, unpinned traffic is all on the baseline...
        after = await all_on(listener, "web-api-perl")
        assert after.failures == 0
        # ...and a pinned request still reaches the candidate.
        pinned = await drive(
            listener, "/api/x", count=40, concurrency=4, headers={"x-junction-version": "go"}
        )
        # Its failures are the candidate's own 500s (error_rate 0.2, answered by web-api-go
        # itself): no transport error, no Envoy-made failure, every answer from it.
        assert pinned.errors == [] and set(pinned.statuses) <= {200, 500}, pinned
        assert pinned.services == {"web-api-go": 40}, pinned
        status = await j.status()
        assert status["canary"]["services"]["web-api"]["state"]["phase"] == "rolled_back"

    # The experiment's arms were logged; the report compares them.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "junction", "report", "--log", str(tmp_path / "access.jsonl"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), PROCESS_BOUND)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "experiment feed: control arm 'control'" in text
    assert "treatment" in text and "vs control" in text


@pytest.mark.timeout(390)  # ~60+15+90+30+60+60 s of bounds, plus teardown
async def test_a_healthy_candidate_is_promoted_through_every_step(tmp_path: Path) -> None:
    perl, go, listener = free_port(), free_port(), free_port()
    cfg, instances = write_stack(
        tmp_path, config(listener, steps="[10, 25, 50, 100]", interval=1.5), perl, go
    )
    events_path = tmp_path / "events.jsonl"
    extra = [
        "--state-dir", str(tmp_path / "state"), "--als-flush-interval", "0.2",
        "--als-log", str(tmp_path / "access.jsonl"), "--canary-events", str(events_path),
        "--extproc-workers", "0",  # Envoy's weighted routes carry the split here
    ]  # fmt: skip
    async with (
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        junction_up(tmp_path, cfg, instances, listener_port=listener, extra=extra) as j,
    ):
        await j.wait_acked()
        tally, stop = Tally(), asyncio.Event()
        traffic = asyncio.create_task(
            drive(
                listener, "/api/x", count=10**6, concurrency=4, duration=70, stop=stop, tally=tally
            )
        )
        try:
            body = await until(
                canary_of(j), lambda b: phase(b) in ("promoted", "rolled_back"), timeout=60
            )
        finally:
            stop.set()
            await traffic
        assert phase(body) == "promoted", body["events"]
        promotions = [
            (e["from_weight"], e["to_weight"]) for e in body["events"] if e["action"] == "promote"
        ]
        assert promotions == [(10, 25), (25, 50), (50, 100)]
        for e in body["events"]:
            if e["action"] == "promote":
                assert e["evidence"]["candidate"]["requests"] >= 20
                assert e["evidence"]["baseline"]["requests"] >= 20
                assert e["evidence"]["tests"]["rollback_e"] < 1000
                assert len(e["evidence"]["thresholds_ms"]) in (0, 3)
        assert tally.failures == 0
        await all_on(listener, "web-api-go")

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "junction", "canary", "status", "web-api",
            "--http", f"127.0.0.1:{j.http_port}",
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), PROCESS_BOUND)
        assert proc.returncode == 0 and "promoted at 100% (step 4/4)" in out.decode()

    png = tmp_path / "canary.png"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "junction", "report", "--log", str(tmp_path / "access.jsonl"),
        "--events", str(events_path), "--png", str(png),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), PROCESS_BOUND)
    assert proc.returncode == 0, err.decode()
    assert "canary chart (web-api)" in out.decode()
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(260)  # ~60+15+70 s of bounds, plus teardown
async def test_both_versions_failing_alike_are_not_rolled_back(tmp_path: Path) -> None:
    """A/A at 2 % errors: the old thresholds rolled 5 of 6 such runs back."""
    perl, go, listener = free_port(), free_port(), free_port()
    cfg, instances = write_stack(
        tmp_path, config(listener, steps="[10, 50, 100]", interval=2.0), perl, go
    )
    extra = [
        "--state-dir", str(tmp_path / "state"), "--als-flush-interval", "0.2",
        "--extproc-workers", "0",
    ]  # fmt: skip
    async with (
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        junction_up(tmp_path, cfg, instances, listener_port=listener, extra=extra) as j,
    ):
        await j.wait_acked()
        for port in (perl, go):
            await post(f"http://127.0.0.1:{port}/_control?error_rate=0.02")
        tally, stop = Tally(), asyncio.Event()
        traffic = asyncio.create_task(
            drive(
                listener, "/api/x", count=10**6, concurrency=4, duration=70, stop=stop, tally=tally
            )
        )
        try:
            body = await until(
                canary_of(j), lambda b: phase(b) in ("promoted", "rolled_back"), timeout=60
            )
        finally:
            stop.set()
            await traffic
        assert phase(body) == "promoted", body["events"]
        assert "rollback" not in [e["action"] for e in body["events"]]
        # Both sides really failed: the comparison was of two 2 % error rates.
        assert tally.failures > 0
        failing = [e for e in body["events"] if e["action"] == "promote"]
        assert sum(e["evidence"]["baseline"]["errors"] for e in failing) > 0


@pytest.mark.timeout(480)  # ~60+15+60+60+5+60+90 s of bounds, plus teardown
async def test_a_killed_controller_resumes_from_the_stored_step(tmp_path: Path) -> None:
    perl, go, listener, als_port = free_port(), free_port(), free_port(), free_port()
    cfg, instances = write_stack(
        tmp_path, config(listener, steps="[10, 25, 50, 75, 100]", interval=1.5), perl, go
    )
    state_dir = tmp_path / "state"
    extra = [
        "--no-als", "--als-port", str(als_port), "--state-dir", str(state_dir),
        "--als-flush-interval", "0.2", "--extproc-workers", "0",
    ]  # fmt: skip

    def stored() -> dict[str, Any]:
        data: dict[str, Any] = json.loads((state_dir / "web-api.json").read_text())["state"]
        return data

    async with (
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        junction_up(tmp_path, cfg, instances, listener_port=listener, extra=extra) as j,
    ):
        await j.wait_acked()
        tally, stop = Tally(), asyncio.Event()
        traffic = asyncio.create_task(
            drive(
                listener, "/api/x", count=10**6, concurrency=4, duration=100, stop=stop, tally=tally
            )
        )
        try:
            async with als_serve(tmp_path, cfg, port=als_port, state_dir=state_dir) as als:

                async def weight() -> int:
                    return int(stored()["weight"]) if (state_dir / "web-api.json").exists() else 0

                await until(weight, lambda w: w >= 25, timeout=35)
                als.proc.send_signal(signal.SIGKILL)
                await als.proc.wait()
            before = stored()
            assert before["phase"] == "ramping" and 25 <= before["weight"] < 100
            killed_at = max(e["at"] for e in before["events"])
            # The control plane keeps serving the stored weight while no controller runs.
            await until(canary_of(j), lambda b: b["state"]["weight"] == before["weight"], timeout=5)

            async with als_serve(tmp_path, cfg, port=als_port, state_dir=state_dir, name="als2"):
                final = await until(
                    canary_of(j), lambda b: phase(b) in ("promoted", "rolled_back"), timeout=45
                )
        finally:
            stop.set()
            await traffic
        assert phase(final) == "promoted", final["events"]
        after = [e for e in final["events"] if e["at"] > killed_at]
        # The restarted controller went on from the stored step: no new start, and its first
        # decision starts from the weight the killed one had stored.
        assert after and "start" not in [e["action"] for e in after]
        assert after[0]["from_weight"] == before["weight"]
        steps = [
            (e["from_weight"], e["to_weight"]) for e in final["events"] if e["action"] == "promote"
        ]
        assert steps == [(10, 25), (25, 50), (50, 75), (75, 100)]
        assert tally.failures == 0
