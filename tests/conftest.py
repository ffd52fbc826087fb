"""Shared fixtures. Tests bind port 0, talk to 127.0.0.1 only and stop what they start."""

from __future__ import annotations

import os

# Tests run gRPC servers in this process and spawn Envoy with a preexec_fn (fork, then
# exec). With gRPC's fork support on, a fork while a gRPC thread is busy can abort the
# child before exec ("Check failed: next_worker->state == KICKED": Envoy "exited with -6
# while starting"). `junction` itself turns it off in its CLI; do the same here, before
# any test module imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from consul_double import ConsulDouble

from junction.canary.store import ConsulStateStore

# Tests `import fakes`, `consul_double`, ... from tests/: pyproject.toml's pytest
# `pythonpath = ["tests"]` puts it on sys.path (no path hack here).


async def eventually(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds (a bound, not a goal)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


T = TypeVar("T")


async def until(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 30.0
) -> T:
    """Poll the coroutine ``probe`` until ``ok`` holds for its value; fail after ``timeout``
    seconds (a bound, not a goal), showing the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout}s; last value: {value!r}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A Consul agent double on 127.0.0.1 (a test module may define its own ``double``)."""
    async with ConsulDouble() as d:
        yield d


@pytest.fixture
async def store(double: ConsulDouble) -> AsyncIterator[ConsulStateStore]:
    """The canary's Consul state store on :func:`double`, closed after the test."""
    s = ConsulStateStore(double.address)
    try:
        yield s
    finally:
        await s.close()
