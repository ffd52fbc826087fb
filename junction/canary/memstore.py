"""An in-memory :class:`~junction.canary.store.StateStore`, for runs that own their clock.

``junction canary replay`` and ``junction canary simulate`` drive the live controller
(:class:`~junction.canary.controller.CanaryController`) on a log's clock or a synthetic
one; the state they write must not touch the real store (Consul KV or the state directory)
that live replicas read. This store keeps the states in a dict with the same CAS contract
(a write succeeds only at the index it was read at; 0 creates), and never suspends, so a
controller tick over it runs without waiting on the event loop.
"""

from __future__ import annotations

from junction.canary.state import CanaryState
from junction.canary.store import StateStore, Stored

__all__ = ["MemoryStateStore"]


class MemoryStateStore(StateStore):
    """States by service in memory; one process, one thread (no locking)."""

    def __init__(self) -> None:
        self.origin = "memory"
        self._states: dict[str, Stored] = {}
        self._index = 0
        #: Successful writes, in order (a run's history, whatever the events kept).
        self.writes = 0

    async def get(self, service: str) -> Stored | None:
        return self._states.get(service)

    def put_now(self, state: CanaryState, *, index: int) -> bool:
        """:meth:`put` without a coroutine (for synchronous drivers and tests)."""
        held = self._states.get(state.service)
        if (0 if held is None else held.index) != index:
            return False
        self._index += 1
        self._states[state.service] = Stored(self._index, state)
        self.writes += 1
        return True

    async def put(self, state: CanaryState, *, index: int) -> bool:
        return self.put_now(state, index=index)

    async def wait_change(self, index: int) -> tuple[int, dict[str, Stored]]:
        # Nothing else writes here, so there is never a change to wait for: answer at once.
        return self._index or 1, dict(self._states)

    def state(self, service: str) -> CanaryState | None:
        """The stored state of ``service`` (None: nothing stored yet)."""
        stored = self._states.get(service)
        return stored.state if stored is not None else None
