"""GceMetadataDouble: stands in for the GCE metadata server's maintenance-event key.

Written from Google's documentation ("View and query VM metadata", "Query the metadata
server for maintenance event notices"):

* ``GET /computeMetadata/v1/instance/maintenance-event`` answers the value as text/plain
  (``NONE``, ``MIGRATE_ON_HOST_MAINTENANCE``, ``TERMINATE_ON_HOST_MAINTENANCE``) with an
  ``ETag`` header (a hash of the value) and ``Metadata-Flavor: Google``;
* a request without ``Metadata-Flavor: Google``, or with ``X-Forwarded-For``, is refused
  with 403;
* ``wait_for_change=true``: with a ``last_etag`` that is not the current ETag the answer is
  immediate; otherwise the request is held until the value changes, or until
  ``timeout_sec`` seconds have passed (then the unchanged value is answered);
* test helpers: :meth:`set` the value, :meth:`fail` the next N requests with a status
  (the real server may answer 503), :attr:`requests` (method, query, headers) seen.

aiohttp on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass

from aiohttp import web

__all__ = ["GceMetadataDouble", "Seen"]

PATH = "/computeMetadata/v1/instance/maintenance-event"


@dataclass(frozen=True)
class Seen:
    query: dict[str, str]
    flavor: str | None
    status: int


class GceMetadataDouble:
    def __init__(self, value: str = "NONE") -> None:
        self.value = value
        self.requests: list[Seen] = []
        self._changed = asyncio.Event()
        self._failures: list[int] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()[:16]

    def set(self, value: str) -> None:
        if value != self.value:
            self.value = value
            self._changed.set()
            self._changed = asyncio.Event()

    def fail(self, count: int, status: int = 503) -> None:
        self._failures.extend([status] * count)

    async def __aenter__(self) -> GceMetadataDouble:
        app = web.Application()
        app.router.add_get(PATH, self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Release held waits: aiohttp's cleanup waits for running handlers.
        self._changed.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.Response:
        flavor = request.headers.get("Metadata-Flavor")
        if self._failures:
            status = self._failures.pop(0)
            self.requests.append(Seen(dict(request.query), flavor, status))
            return web.Response(status=status, text="Service Unavailable\n")
        if flavor != "Google" or "X-Forwarded-For" in request.headers:
            self.requests.append(Seen(dict(request.query), flavor, 403))
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.\n")
        self.requests.append(Seen(dict(request.query), flavor, 200))
        if request.query.get("wait_for_change") == "true":
            last = request.query.get("last_etag")
            if last is None or last == self.etag:
                timeout = float(request.query.get("timeout_sec", "3600"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
        return web.Response(
            text=self.value,
            headers={"ETag": self.etag, "Metadata-Flavor": "Google"},
            content_type="application/text",
        )
