"""The gRPC receiver over a real grpc.aio server on 127.0.0.1:0: streams from several
clients, rejections counted (never a crash), and the bounded queue's drop policy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from als_wire import send
from conftest import eventually

from junction.als.pipeline import Pipeline
from junction.als.receiver import create_server
from junction.als.synthetic import Outcome, message
from junction.als.windows import Windows


@contextlib.asynccontextmanager
async def receiver(
    *, run: bool = True, max_message_bytes: int = 64 * 1024, max_queue_bytes: int = 1 << 20
) -> AsyncIterator[tuple[Pipeline, int]]:
    pipeline = Pipeline(Windows(), max_queue_bytes=max_queue_bytes)
    task = asyncio.create_task(pipeline.run()) if run else None
    server, port = await create_server(pipeline, max_message_bytes=max_message_bytes)
    try:
        yield pipeline, port
    finally:
        await server.stop(0)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def batch(n: int, *, node: str | None = "envoy-a", **kw: object) -> bytes:
    now = time.time()
    return message([Outcome(start=now, **kw) for _ in range(n)], node=node).SerializeToString()  # type: ignore[arg-type]


async def test_streams_from_several_envoys_are_counted_by_node() -> None:
    async with receiver() as (pipeline, port):
        codes = await asyncio.gather(
            send(port, [batch(50, node="envoy-a"), batch(50, node=None)]),
            send(port, [batch(30, node="envoy-b", cluster="web-api-perl")]),
        )
        assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK]
        await eventually(lambda: pipeline.counters.processed_entries == 130)
        c = pipeline.counters
        assert (c.streams_opened, c.streams_active, c.messages, c.entries) == (2, 0, 3, 130)
        now = time.time()
        assert pipeline.windows.figures(now - 60, now, cluster="web-api-perl").requests == 30
        assert pipeline.windows.figures(now - 60, now, cluster="web-api-go").requests == 100


@pytest.mark.parametrize(
    ("payload", "code", "counter"),
    [
        (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "rejected_malformed"),
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "rejected_malformed"),  # nothing in it
        (
            b"\x08\x01",
            grpc.StatusCode.INVALID_ARGUMENT,
            "rejected_malformed",
        ),  # another message's field
        (
            b"\x0a\x02\xc3\x28",
            grpc.StatusCode.INVALID_ARGUMENT,
            "rejected_malformed",
        ),  # bad nested bytes
        (b"x" * (64 * 1024 + 1), grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected_oversized"),
    ],
)
async def test_bad_messages_are_rejected_and_counted(
    payload: bytes, code: grpc.StatusCode, counter: str
) -> None:
    async with receiver() as (pipeline, port):
        assert await send(port, [batch(5), payload, batch(5)]) == code
        assert getattr(pipeline.counters, counter) == 1
        # The entries before the bad message were taken; the stream ended at it.
        await eventually(lambda: pipeline.counters.processed_entries == 5)
        # And the receiver carries on serving other streams.
        assert await send(port, [batch(7)]) == grpc.StatusCode.OK
        await eventually(lambda: pipeline.counters.processed_entries == 12)
        assert pipeline.counters.streams_active == 0


async def test_a_full_queue_drops_whole_messages_and_counts_them_as_missing() -> None:
    one = len(batch(20))
    # The worker is not running: the queue only fills. Room for two messages.
    async with receiver(run=False, max_queue_bytes=2 * one + 10) as (pipeline, port):
        assert await send(port, [batch(20) for _ in range(5)]) == grpc.StatusCode.OK
        c = pipeline.counters
        assert (c.messages, c.entries, c.dropped_messages, c.dropped_entries) == (5, 100, 3, 60)
        now = time.time()
        assert pipeline.windows.missing(now - 60, now) == 60
        assert pipeline.queued_bytes <= pipeline.max_queue_bytes
        while pipeline.process_one():
            pass
        assert pipeline.counters.processed_entries == 40


async def test_a_message_that_breaks_processing_is_skipped_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import junction.als.pipeline as pipeline_module

    calls = {"n": 0}
    real = pipeline_module.records_from_entries

    def flaky(entries, node, now):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real(entries, node, now)

    monkeypatch.setattr(pipeline_module, "records_from_entries", flaky)
    async with receiver() as (pipeline, port):
        assert await send(port, [batch(3), batch(4)]) == grpc.StatusCode.OK
        await eventually(lambda: pipeline.counters.processed_entries == 4)
        assert pipeline.counters.failed_messages == 1
