"""A billion-laughs document written to the config file of a running `junction up`, under
load: /healthz answers every poll meanwhile, the document is rejected by path, and Envoy
keeps the last good config (every request through it still succeeds)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from harness import Tally, drive, free_port, junction_up, upstreams
from hostile_yaml import billion_laughs

pytestmark = pytest.mark.slow

CONFIG = """\
listener: {{listen: {{address: 127.0.0.1, port: {listener}}}}}
route: {{domain: [example.com], cluster: {{web-api-go: {{prefix: [/]}}}}}}
cluster: {{loadbalancer: {{web-api-go: {{}}}}}}
"""


async def test_billion_laughs_under_load_keeps_healthz_answering_and_envoy_serving(
    tmp_path: Path,
) -> None:
    go, listener = free_port(), free_port()
    config = tmp_path / "config.yaml"
    good = CONFIG.format(listener=listener)
    config.write_text(good)
    instances = tmp_path / "instances.yaml"
    instances.write_text(f"services: {{web-api-go: [{{address: 127.0.0.1, port: {go}}}]}}\n")
    async with (
        upstreams([("web-api-go", go)]),
        junction_up(tmp_path, config, instances, listener_port=listener) as junction,
    ):
        good_version = (await junction.wait_acked())["config"]["version"]
        warm = await drive(listener, "/x", count=20)
        assert warm.failures == 0, warm
        stop = asyncio.Event()
        traffic = Tally()
        load = asyncio.create_task(
            drive(listener, "/x", count=50_000, duration=60, stop=stop, tally=traffic)
        )
        polls: list[int | str] = []

        async def poll() -> None:
            # Generous per-request bound: an answer late by seconds is a stall, not noise.
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                url = f"http://127.0.0.1:{junction.http_port}/healthz"
                while not stop.is_set() and len(polls) < 5000:
                    try:
                        async with session.get(url) as resp:
                            polls.append(resp.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        polls.append(repr(exc))
                    await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())
        try:
            tmp = config.with_suffix(".tmp")
            tmp.write_text(billion_laughs(head=good))
            os.replace(tmp, config)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                status = await junction.status()
                error = status["config"]["last_error"]
                if error is not None:
                    break
                assert loop.time() < deadline, junction.log()
                await asyncio.sleep(0.05)
            assert "lol6: expands to 1,129,312 YAML nodes through aliases" in error["message"]
            # Keep polling and loading a little after the rejection too.
            seen = len(polls)
            while len(polls) < seen + 20:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(load, poller)
        assert polls and all(p == 200 for p in polls), [p for p in polls if p != 200][:5]
        assert traffic.failures == 0 and sum(traffic.statuses.values()) > 0, traffic
        status = await junction.status()
        assert status["config"]["version"] == good_version
        assert status["snapshot"]["config_version"] == good_version
        after = await drive(listener, "/x", count=20)
        assert after.failures == 0, after
