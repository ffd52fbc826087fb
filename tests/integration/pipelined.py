"""A pipelining HTTP/1.1 client for tests that send tens of thousands of small requests
through a real Envoy: each connection writes a batch of requests at once and reads the
answers in order (Envoy's HTTP/1.1 codec serves pipelined requests one after the other).
An aiohttp client spends far more Python per request than Envoy spends routing it; this
parses only the status line and headers, so Envoy stays the limit.

Loopback only; every connection is closed before returning; bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

__all__ = ["Reply", "request", "send_all"]

Reply = tuple[int, dict[bytes, bytes]]


def request(
    path: bytes, headers: Sequence[tuple[bytes, bytes]], host: bytes = b"example.com"
) -> bytes:
    """One GET, raw bytes (headers are sent as given: repeated names stay repeated)."""
    lines = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers)
    return b"GET %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (path, host, lines)


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    if length:
        await reader.readexactly(length)
    return status, headers


async def send_all(
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int = 4,
    batch: int = 100,
    timeout: float = 120.0,
) -> list[Reply]:
    """Every request's (status, lowercase headers), in the order given."""
    out: list[Reply | None] = [None] * len(requests)

    async def one_connection(indexes: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            for start in range(0, len(indexes), batch):
                chunk = indexes[start : start + batch]
                writer.write(b"".join(requests[i] for i in chunk))
                for i in chunk:
                    out[i] = await _read_reply(reader)
        finally:
            writer.close()

    await asyncio.wait_for(
        asyncio.gather(
            *(
                one_connection(list(range(c, len(requests), connections)))
                for c in range(connections)
            )
        ),
        timeout,
    )
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]
