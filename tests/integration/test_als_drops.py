"""junction.als.envoy_drops against a real Envoy's admin API.

The canary controller refuses to promote on a window in which Envoy dropped access logs,
and learns of drops only from Envoy's counters. A stat name that Envoy does not use would
read as 0 forever and silently switch that guard off, so this test asks a real Envoy (with
the gRPC access logger on its listener) for the very names the module reads, and checks
that the counts move with traffic, both read directly and through `junction up`'s /status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import until
from harness import drive, free_port, junction_up, upstreams
from test_als_envoy import CONFIG, write_stack

from junction.als.envoy_drops import (
    DROPPED_STAT,
    FLUSH_FAILED_STAT,
    WRITTEN_STAT,
    EnvoyDrops,
    fetch_counters,
)
from junction.als.windows import Windows

pytestmark = pytest.mark.slow


async def test_the_counters_envoy_drops_reads_exist_and_move(tmp_path: Path) -> None:
    perl, go, listener = free_port(), free_port(), free_port()
    config, instances = write_stack(tmp_path, CONFIG.format(listener=listener), perl, go)
    extra = [
        "--als-flush-interval", "0.1", "--extproc-workers", "0",
        "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    async with (
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        junction_up(tmp_path, config, instances, listener_port=listener, extra=extra) as j,
    ):
        await j.wait_acked()
        admin = (await j.status())["envoy_admin"]
        counters = await fetch_counters(admin, timeout=10)
        # Envoy lists its counters from the start, zeros included: every name read is there.
        for name in (DROPPED_STAT, WRITTEN_STAT, FLUSH_FAILED_STAT):
            assert name in counters, (name, sorted(counters))

        drops = EnvoyDrops(Windows(), lambda: admin)
        await drops.poll()
        assert drops.error is None
        written_before = drops.written
        tally = await drive(listener, "/api/x", count=200, concurrency=4)
        assert tally.failures == 0, tally

        async def written() -> int:
            await drops.poll()
            assert drops.error is None, drops.error
            return drops.written

        # One access-log entry per request, counted by Envoy as written.
        await until(written, lambda n: n >= written_before + 200)
        assert drops.dropped == 0  # nothing dropped on a receiver that keeps up

        # `junction up`'s own reader (the canary's guard) sees the same counters.
        async def als_envoy() -> dict[str, Any]:
            status: dict[str, Any] = (await j.status())["als"]["envoy"]
            return status

        seen = await until(als_envoy, lambda s: s["logs_written"] >= written_before + 200)
        assert seen["error"] is None and seen["logs_dropped_seen"] == 0
