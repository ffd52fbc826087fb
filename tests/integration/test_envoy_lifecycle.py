"""Envoy's lifecycle under `junction up`: an Envoy that dies by itself takes `junction up`
down with a non-zero exit and every child stopped; an Envoy that cannot start (or cannot
be run at all) is a clear error, exit 1, and nothing left running.

"Nothing left running" is checked by the environment, not by parentage (orphans are
re-parented): each test gives `junction up` a unique tag in its environment, inherited by
Envoy and the decision workers, and looks for live processes carrying it in /proc.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import eventually, until
from harness import PYTHON, ROOT, free_port, junction_up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

TAG = "JUNCTION_TEST_LIFECYCLE"
BOUND = 60.0  # seconds: a bound on each wait, not a goal

CONFIG = """\
listener:
  listen: {{address: 127.0.0.1, port: {listener}}}
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
    pin: {{trust: any}}
"""
INSTANCES = """\
services:
  web-api-perl: [{address: 127.0.0.1, port: 1}]
  web-api-go: [{address: 127.0.0.1, port: 2}]
"""


def tagged(tag: str) -> dict[int, str]:
    """Live processes (pid -> command line) whose environment holds ``TAG=tag``."""
    wanted = f"{TAG}={tag}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or a zombie
            continue
        found[int(entry.name)] = cmdline
    return found


def write_stack(tmp: Path, listener: int) -> tuple[Path, Path]:
    config, instances = tmp / "config.yaml", tmp / "instances.yaml"
    config.write_text(CONFIG.format(listener=listener))
    instances.write_text(INSTANCES)
    return config, instances


async def run_up(tmp: Path, extra: Sequence[str], env: dict[str, str]) -> tuple[int, str]:
    """`junction up` expected to fail at start: its exit code and output (bounded)."""
    config, instances = write_stack(tmp, free_port())
    args = [
        PYTHON, "-m", "junction", "up", "-c", str(config), "--instances", str(instances),
        "--http-port", "0", "--xds-port", "0", "--envoy-admin-port", "0",
        "--extproc-workers", "1", "--node-id", f"lifecycle-{uuid.uuid4().hex[:8]}", *extra,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), BOUND)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_envoy_dying_stops_junction_up_and_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener, stats_port = free_port(), free_port()
    config, instances = write_stack(tmp_path, listener)
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG, tag)  # inherited by junction up, Envoy and the workers
    extra = ["--extproc-workers", "2", "--extproc-stats-port", str(stats_port)]
    async with junction_up(tmp_path, config, instances, listener_port=listener, extra=extra) as j:
        monkeypatch.delenv(TAG)
        await j.wait_acked()

        async def family() -> dict[int, str]:
            return tagged(tag)

        # junction up, its Envoy and two decision workers (the workers start once the
        # config needs decisions).
        def envoys(procs: dict[int, str]) -> list[int]:
            return [p for p, c in procs.items() if c.split(" ")[0].endswith("/envoy")]

        running = await until(
            family, lambda procs: len(envoys(procs)) == 1 and len(procs) >= 4, timeout=BOUND
        )
        (envoy,) = envoys(running)
        assert j.proc.pid in running
        os.kill(envoy, signal.SIGKILL)  # Envoy dies by itself, as far as junction knows
        code = await asyncio.wait_for(j.proc.wait(), BOUND)
        assert code == 1, j.log()
        assert "Envoy exited with -9; stopping" in j.log()
    await eventually(lambda: not tagged(tag), timeout=BOUND)


async def test_envoy_failing_to_start_is_a_clear_error(tmp_path: Path) -> None:
    # Envoy cannot bind its admin port (something else holds it): it exits while starting.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    tag = uuid.uuid4().hex
    try:
        port = busy.getsockname()[1]
        code, out = await run_up(tmp_path, ["--envoy-admin-port", str(port)], {TAG: tag})
    finally:
        busy.close()
    assert code == 1, out
    assert "junction up: Envoy exited with 1 while starting" in out, out
    assert f"127.0.0.1:{port}" in out, out  # Envoy's own words, from its log
    assert "Traceback" not in out, out
    await eventually(lambda: not tagged(tag), timeout=BOUND)


async def test_an_envoy_that_cannot_be_run_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-envoy"
    tag = uuid.uuid4().hex
    code, out = await run_up(tmp_path, [], {TAG: tag, "JUNCTION_ENVOY": str(missing)})
    assert code == 1, out
    assert f"junction up: cannot run Envoy {missing}: No such file or directory" in out, out
    assert "Traceback" not in out, out
    await eventually(lambda: not tagged(tag), timeout=BOUND)
