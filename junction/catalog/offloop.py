"""Config documents parsed and validated off the event loop that serves xDS and /healthz.

:class:`OffLoopConfig` wraps any :class:`ConfigSource`: each text the source reports is
loaded in a worker thread (:func:`~junction.config.load.prepare_config`) before the sink
sees it, and the sink's own ``load_config`` of that same text object then returns the
prepared outcome at once. Only the newest text waits (texts that arrive meanwhile replace
it), and one that is not loaded within ``timeout`` seconds is rejected with a message
saying so: the sink keeps its last good config, as for any rejected document.

A thread is enough because the document is bounded first (size, and nodes after alias
expansion: :mod:`junction.config.yamldoc`), so the work is short and releases the GIL to
the loop between bytecodes; the timeout is the last line, should the bounds be too loose.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterable

from junction.catalog.model import Instance
from junction.catalog.source import ConfigSource, SourceSink
from junction.config.errors import ConfigError, Problem
from junction.config.load import prepare_config, remember_config

__all__ = ["OffLoopConfig"]

log = logging.getLogger("junction.config")

#: One thread for every control plane in the process: documents are loaded one at a time.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="config")


class OffLoopConfig(ConfigSource):
    """``source``, with every config text loaded in a worker thread first."""

    def __init__(self, source: ConfigSource, *, timeout: float = 10.0) -> None:
        self.source = source
        self.origin = source.origin
        self.timeout = timeout

    async def run(self, sink: SourceSink) -> None:
        relay = _Relay(sink, self.timeout)
        try:
            await self.source.run(relay)
        finally:
            await relay.close()


class _Relay:
    """The sink the wrapped source reports to."""

    def __init__(self, sink: SourceSink, timeout: float) -> None:
        self._sink = sink
        self._timeout = timeout
        self._latest: tuple[str, str] | None = None
        self._worker: asyncio.Task[None] | None = None

    def config_text(self, origin: str, text: str) -> None:
        self._latest = (origin, text)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        self._sink.instances(service, instances)

    def source_error(self, origin: str, message: str) -> None:
        self._sink.source_error(origin, message)

    def source_ok(self, origin: str) -> None:
        self._sink.source_ok(origin)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._latest is not None:
            origin, text = self._latest
            self._latest = None
            future = loop.run_in_executor(_EXECUTOR, prepare_config, text, origin)
            try:
                await asyncio.wait_for(asyncio.shield(future), self._timeout)
            except TimeoutError:
                # The thread cannot be stopped; its late outcome is overwritten below and
                # the next document waits for it (one at a time).
                message = f"not parsed and validated within {self._timeout:g} s; rejected"
                log.error("config from %s: %s", origin, message)
                remember_config(text, origin, ConfigError(origin, [Problem("", message)]))
            self._sink.config_text(origin, text)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
