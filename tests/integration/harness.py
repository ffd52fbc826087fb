"""Real processes for integration tests: demo upstreams, ``junction up`` (which runs a real
Envoy), and a small HTTP client that drives traffic through Envoy.

Everything binds 127.0.0.1, ports come from binding port 0, and every process started here
is stopped by the context manager that started it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
#: A bound on a child process opening its port: Python's imports alone take seconds on a
#: loaded machine, several times that under `make coverage`.
STARTUP = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout}s"
                ) from None
            await asyncio.sleep(0.05)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def upstreams(specs: Sequence[tuple[str, int]]) -> AsyncIterator[None]:
    """Demo upstreams (examples/upstream.py) in one real process."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(ROOT / "examples" / "upstream.py"), *[f"{n}:{p}" for n, p in specs],
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _, port in specs:
            await wait_port(port)
        yield
    finally:
        await stop_process(proc)


@dataclass
class Junction:
    """A running ``junction up``: its ports, its log, and helpers to read its status."""

    proc: asyncio.subprocess.Process
    http_port: int
    listener_port: int
    log_path: Path
    session: aiohttp.ClientSession = field(repr=False)

    async def status(self) -> dict[str, Any]:
        async with self.session.get(f"http://127.0.0.1:{self.http_port}/status") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def healthz(self) -> tuple[int, str]:
        async with self.session.get(f"http://127.0.0.1:{self.http_port}/healthz") as resp:
            return resp.status, await resp.text()

    async def envoy_admin(self, path: str) -> Any:
        admin = (await self.status())["envoy_admin"]
        async with self.session.get(f"http://{admin}{path}") as resp:
            if "json" in path:
                return await resp.json(content_type=None)
            return await resp.text()

    async def wait_acked(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until Envoy has ACKed the latest snapshot (every type) and `up` knows its
        admin address (Envoy can connect to xDS and ACK before `up` has read the address
        Envoy writes once its admin listener is up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                status = await self.status()
                if status["snapshot"]["version"] and _all_acked(status) and status["envoy_admin"]:
                    return status
            if loop.time() > deadline:
                raise AssertionError(f"Envoy did not ACK within {timeout}s; log:\n{self.log()}")
            await asyncio.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-5000:]
        except OSError:
            return ""


def _all_acked(status: dict[str, Any]) -> bool:
    nodes = status.get("nodes") or []
    return bool(nodes) and all(n.get("synced") for n in nodes if n.get("connected"))


@contextlib.asynccontextmanager
async def junction_up(
    tmp: Path,
    config: Path | None,
    instances: Path | None,
    *,
    listener_port: int,
    extra: Sequence[str] = (),
) -> AsyncIterator[Junction]:
    """``junction up`` as a real child process; stopped with SIGTERM at the end."""
    http_port = free_port()
    log_path = tmp / "junction.log"
    args = [
        PYTHON, "-m", "junction", "--log-level", "debug", "up",
        "--http-port", str(http_port), "--xds-port", "0", "--envoy-admin-port", "0",
        "--node-id", f"test-{os.getpid()}-{http_port}",
        *extra,
    ]  # fmt: skip
    if config is not None:
        args += ["-c", str(config)]
    if instances is not None:
        args += ["--instances", str(instances)]
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, cwd=ROOT
        )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    junction = Junction(proc, http_port, listener_port, log_path, session)
    try:
        await wait_port(http_port, timeout=STARTUP)
        yield junction
    finally:
        await session.close()
        await stop_process(proc)


@dataclass
class Tally:
    """Responses seen while driving traffic: by upstream service, by port, and failures."""

    services: Counter[str] = field(default_factory=Counter)
    ports: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    hosts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200) + len(self.errors)


async def drive(
    port: int,
    path: str,
    *,
    host: str = "example.com",
    count: int = 200,
    concurrency: int = 8,
    duration: float = 30.0,
    headers: dict[str, str] | None = None,
    stop: asyncio.Event | None = None,
    tally: Tally | None = None,
) -> Tally:
    """Send up to ``count`` requests (bounded by ``duration`` s and ``stop``) through Envoy."""
    tally = tally or Tally()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    remaining = count
    url = f"http://127.0.0.1:{port}{path}"
    send = {"Host": host, **(headers or {})}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0 and loop.time() < deadline and not (stop and stop.is_set()):
            remaining -= 1
            try:
                async with session.get(url, headers=send) as resp:
                    await resp.read()
                    tally.statuses[resp.status] += 1
                    tally.services[resp.headers.get("x-upstream-service", "-")] += 1
                    tally.ports[resp.headers.get("x-upstream-port", "-")] += 1
                    tally.hosts[resp.headers.get("x-upstream-host", "-")] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.errors.append(repr(exc))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=5)
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return tally


async def post(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(url) as resp:
        resp.raise_for_status()
