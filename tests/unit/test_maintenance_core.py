"""The maintenance agent: its pure decisions, and the agent itself in-process against the
stand-in metadata server and a small control-plane double (refusals, restarts)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from conftest import eventually
from gce_metadata_double import GceMetadataDouble

from junction.catalog.consul import Backoff
from junction.drain.agent import AgentSettings, MaintenanceAgent
from junction.drain.maintenance import (
    Action,
    AgentState,
    after_result,
    next_action,
    observe,
)


def test_decisions_follow_values_not_errors() -> None:
    s = AgentState()
    assert next_action(s) is None  # nothing read yet: do nothing
    s = observe(s, "NONE")
    assert next_action(s) is None
    s = observe(s, "MIGRATE_ON_HOST_MAINTENANCE")
    assert next_action(s) is Action.DRAIN
    s = after_result(s, Action.DRAIN, ok=False)
    assert s.pending and next_action(s) is Action.DRAIN  # retried, not forgotten
    s = after_result(s, Action.DRAIN, ok=True)
    assert s.drained and not s.pending and next_action(s) is None
    s = observe(s, "TERMINATE_ON_HOST_MAINTENANCE")
    assert next_action(s) is None  # still in maintenance: nothing to send again
    s = observe(s, "NONE\n")
    assert next_action(s) is Action.UNDRAIN
    s = after_result(s, Action.UNDRAIN, ok=True)
    assert not s.drained and next_action(s) is None
    assert observe(AgentState(), "").value == "NONE"


class ControlPlane:
    """The drain API as the agent uses it; refuses the first ``refuse`` drains (409)."""

    def __init__(self, refuse: int = 0, drains: list[dict[str, Any]] | None = None) -> None:
        self.refuse = refuse
        self.drains = drains or []
        self.calls: list[tuple[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/drain", self._list)
        app.router.add_post("/drain/{s}/{i}", self._post)
        app.router.add_delete("/drain/{s}/{i}", self._delete)
        return app

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"drains": self.drains})

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("POST", request.match_info["i"]))
        if self.refuse > 0:
            self.refuse -= 1
            return web.json_response({"error": "would leave svc with none"}, status=409)
        self.drains = [{"service": "svc", "instance": request.match_info["i"], **body}]
        return web.json_response({"drain": body, "effect": "ok"})

    async def _delete(self, request: web.Request) -> web.Response:
        self.calls.append(("DELETE", request.match_info["i"]))
        if not self.drains:
            return web.json_response({"error": "not drained"}, status=404)
        self.drains = []
        return web.json_response({"undrained": {}})


@contextlib.asynccontextmanager
async def running(cp: ControlPlane, metadata: GceMetadataDouble) -> AsyncIterator[MaintenanceAgent]:
    runner = web.AppRunner(cp.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    agent = MaintenanceAgent(
        AgentSettings(
            "svc", "10.0.0.1:80", f"127.0.0.1:{port}", metadata.url,
            backoff=Backoff(0.02, 0.1),
        )
    )  # fmt: skip
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()


async def test_a_refused_drain_is_retried_until_accepted() -> None:
    cp = ControlPlane(refuse=2)
    async with GceMetadataDouble("MIGRATE_ON_HOST_MAINTENANCE") as md, running(cp, md) as agent:
        await eventually(lambda: agent.state.drained, timeout=10)
        assert cp.calls == [("POST", "10.0.0.1:80")] * 3
        assert cp.drains[0]["by"] == "maintenance-agent"
        md.set("NONE")
        await eventually(lambda: not agent.state.drained, timeout=10)
        assert cp.calls[-1] == ("DELETE", "10.0.0.1:80")


async def test_a_restarted_agent_undoes_its_own_drain_but_not_an_operators() -> None:
    own = [{"service": "svc", "instance": "10.0.0.1:80", "by": "maintenance-agent"}]
    cp = ControlPlane(drains=own)
    async with GceMetadataDouble("NONE") as md, running(cp, md):
        await eventually(lambda: cp.drains == [], timeout=10)
    theirs = [{"service": "svc", "instance": "10.0.0.1:80", "by": "operator"}]
    cp = ControlPlane(drains=theirs)
    async with GceMetadataDouble("NONE") as md, running(cp, md):
        await eventually(lambda: len(md.requests) >= 2, timeout=10)  # long-polling now
        assert cp.calls == [] and cp.drains == theirs


async def test_metadata_errors_change_nothing() -> None:
    cp = ControlPlane()
    async with GceMetadataDouble("MIGRATE_ON_HOST_MAINTENANCE") as md, running(cp, md) as agent:
        await eventually(lambda: agent.state.drained, timeout=10)
        md.fail(4, 500)
        md.set("TERMINATE_ON_HOST_MAINTENANCE")
        await eventually(lambda: [r.status for r in md.requests].count(500) == 4, timeout=10)
        await eventually(lambda: agent.state.value == "TERMINATE_ON_HOST_MAINTENANCE", timeout=10)
        assert agent.state.drained and cp.calls == [("POST", "10.0.0.1:80")]
