"""`junction maintenance-agent` against a stand-in GCE metadata server, with `junction up`
(a real Envoy): the instance is DRAINING while a maintenance event is announced."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from conftest import until
from gce_metadata_double import GceMetadataDouble
from harness import ROOT, free_port, stop_process, upstreams
from test_drain import eds_status, replica

pytestmark = pytest.mark.slow

CONFIG = """\
listener:
  listen: {{address: 127.0.0.1, port: {listener}}}
route: {{domain: [example.com], cluster: {{svc: {{prefix: [/]}}}}}}
cluster: {{loadbalancer: {{svc: {{}}}}}}
"""


async def test_agent_drains_during_maintenance_and_undrains_after(tmp_path: Path) -> None:
    a, b, listener = free_port(), free_port(), free_port()
    (tmp_path / "config.yaml").write_text(CONFIG.format(listener=listener))
    (tmp_path / "instances.yaml").write_text(
        "services:\n  svc:\n"
        f"    - {{address: 127.0.0.1, port: {a}}}\n"
        f"    - {{address: 127.0.0.1, port: {b}}}\n"
    )
    me = f"127.0.0.1:{a}"
    agent_log = tmp_path / "agent.log"
    async with (
        GceMetadataDouble("NONE") as metadata,
        upstreams([("svc", a), ("svc", b)]),
        replica(tmp_path, "cp", tmp_path / "state", listener) as junction,
    ):
        with agent_log.open("wb") as out:
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "junction", "maintenance-agent",
                "--service", "svc", "--instance", me,
                "--http", f"127.0.0.1:{junction.http_port}", "--metadata-url", metadata.url,
                cwd=ROOT, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        try:

            async def eds() -> str | None:
                return eds_status(await junction.envoy_admin("/clusters?format=json"), a)

            def waiting() -> bool:  # the agent is in a long poll
                return any(r.query.get("wait_for_change") == "true" for r in metadata.requests)

            await until(lambda: asyncio.sleep(0.05, waiting()), bool)
            assert await eds() == "HEALTHY"
            metadata.set("MIGRATE_ON_HOST_MAINTENANCE")
            await until(eds, lambda s: s == "DRAINING")
            (drain,) = (await junction.status())["drains"]["drains"]
            assert drain["by"] == "maintenance-agent" and drain["instance"] == me
            assert drain["reason"] == "GCE maintenance-event MIGRATE_ON_HOST_MAINTENANCE"
            # The metadata server fails for a while, and the value changes to another
            # maintenance kind: the instance stays drained, nothing is sent again.
            metadata.fail(3, 503)
            metadata.set("TERMINATE_ON_HOST_MAINTENANCE")
            await until(
                lambda: asyncio.sleep(0.1, [r.status for r in metadata.requests]),
                lambda s: s.count(503) == 3 and s[-1] == 200,
            )
            assert await eds() == "DRAINING"
            metadata.set("NONE")
            await until(eds, lambda s: s == "HEALTHY")
            assert (await junction.status())["drains"]["drains"] == []
        finally:
            await stop_process(agent)
        log = agent_log.read_text()
        # Every read carried the header; every read after the first waited for a change
        # of the ETag it had been given.
        assert {r.flavor for r in metadata.requests} == {"Google"}
        etags = {r.query.get("last_etag") for r in metadata.requests[1:]} - {None}
        assert etags and all(len(e) == 16 for e in etags)
        # It said what it did and why, and did each once: no flapping.
        assert log.count(": draining svc") == 1 and log.count(": undraining svc") == 1, log
        assert "maintenance-event is MIGRATE_ON_HOST_MAINTENANCE" in log
        assert "metadata server" in log and "answered 503" in log
        assert junction.log().count("by maintenance-agent") == 1
