"""Reading canary states as they change: :class:`CanaryStateSource`, for whoever applies them.

Same shape as the config and catalog sources (:mod:`junction.catalog.source`): a source
runs until cancelled and reports to a sink; it never stops on a bad value or an unreachable
store, it reports the problem and carries on, and the sink keeps the last good states.

Who plugs it in:

- the xDS publisher (``Publisher.canary_states``): route weights, via
  :func:`junction.canary.apply.apply_canary`;
- the decision service: give it a sink whose ``canary_states`` recompiles the decision
  table from ``apply_canary(config, states)`` (the canary weight it reads from
  ``versions.<service>.canary.weight`` is then the stored one)::

      source = CanaryStateSource(ConsulStateStore("127.0.0.1:8500"))   # or FileStateStore
      task = asyncio.create_task(source.run(my_sink))

With Consul the watch is a blocking query, so a new state arrives within milliseconds; with
files the directory is polled every 0.2 s. Either way well within the 1 s the ramp needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from junction.canary.errors import StoreError
from junction.canary.state import CanaryState
from junction.canary.store import StateStore
from junction.catalog.consul import Backoff, TokenBucket

__all__ = ["CanaryBoard", "CanaryStateSink", "CanaryStateSource"]

log = logging.getLogger("junction.canary")


class CanaryStateSink(Protocol):
    """What a :class:`CanaryStateSource` reports to. Calls are cheap and never raise."""

    def canary_states(self, origin: str, states: Mapping[str, CanaryState]) -> None:
        """Every valid stored state, by service (complete: a service absent has none)."""

    def source_error(self, origin: str, message: str) -> None:
        """The store could not be read, or holds values that are not states."""

    def source_ok(self, origin: str) -> None:
        """The store was read cleanly again."""


class CanaryStateSource:
    """Watches a :class:`StateStore` and reports every change of the states."""

    def __init__(
        self, store: StateStore, *, backoff: Backoff | None = None, rate_interval: float = 0.1
    ) -> None:
        self.store = store
        self.origin = store.origin
        self._backoff = backoff or Backoff()
        self._rate_interval = rate_interval

    async def run(self, sink: CanaryStateSink) -> None:
        """Report the states at once, then on every change, until cancelled."""
        index = 0
        failures = 0
        reported: dict[str, CanaryState] | None = None
        problem: str | None = None
        bucket = TokenBucket(self._rate_interval)
        while True:
            pause = bucket.take()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                index, stored = await self.store.wait_change(index)
            except StoreError as exc:
                if str(exc) != problem:
                    problem = str(exc)
                    sink.source_error(self.origin, problem)
                index = 0
                await asyncio.sleep(self._backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            problems = sorted(s.problem for s in stored.values() if s.problem)
            now_problem = "; ".join(problems) or None
            if now_problem != problem:
                problem = now_problem
                if problem:
                    sink.source_error(self.origin, problem)
                else:
                    sink.source_ok(self.origin)
            states = {k: s.state for k, s in sorted(stored.items()) if s.state is not None}
            if states != reported:
                reported = states
                sink.canary_states(self.origin, states)


class CanaryBoard:
    """A :class:`CanaryStateSink` that keeps the latest states (for /canary and commands)
    and passes every report on to ``forward`` sinks (the publisher)."""

    def __init__(self, *forward: CanaryStateSink) -> None:
        self._forward = forward
        self.states: dict[str, CanaryState] = {}
        self.origin: str | None = None
        self.error: str | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def canary_states(self, origin: str, states: Mapping[str, CanaryState]) -> None:
        self.origin = origin
        self.states = dict(states)
        for sink in self._forward:
            sink.canary_states(origin, states)
        for callback in self._listeners:
            callback()

    def source_error(self, origin: str, message: str) -> None:
        if message != self.error:
            log.warning("canary states from %s: %s", origin, message)
        self.error = message
        for sink in self._forward:
            sink.source_error(origin, message)

    def source_ok(self, origin: str) -> None:
        self.error = None
        for sink in self._forward:
            sink.source_ok(origin)

    def status(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "error": self.error,
            "services": {name: s.to_json() for name, s in sorted(self.states.items())},
        }
