"""Replay: the live canary controller over recorded access logs, on the log's own clock.

``junction canary replay -c CONFIG --log PATH`` answers "would this policy have rolled back
last week's release?". It runs the *same* code as a live replica: the log's records go
into a :class:`~junction.als.windows.Windows` and a
:class:`~junction.canary.controller.CanaryController` ticks over them, both driven by an
injected clock that follows the log instead of the wall, with the states in a
:class:`~junction.canary.memstore.MemoryStateStore` (the real store is never touched).

The clock: the ramp of every service with a ``ramp`` in the config starts at the first
record's time ``t0``; the controller ticks at ``t0``, ``t0 + tick``, ... (``tick``: the
live controller's period, 0.5 s) until every record has been counted. Before the tick at
``T`` the windows get every record that had ended by ``T`` (``t + ms``, the time the live
receiver could first have seen it). Records are read in file order, which is their
arrival order, so records are held back in a heap by end time; reading stops
``lookahead`` seconds of log time past ``T`` (Envoy flushes its access-log buffer every
second), which bounds memory to a few seconds of traffic.

Replay cannot re-route: the weights it decides are not the weights the logged traffic was
split by. It judges the traffic as it was logged (a dry run of the policy); after a
rollback it keeps reading and decides nothing more for that service.

Deterministic: the same records and config give the same decisions (no wall clock, no
randomness, no threads).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from junction.als.logfile import BadLine
from junction.als.record import LogRecord
from junction.als.windows import Windows
from junction.canary.controller import CanaryController
from junction.canary.memstore import MemoryStateStore
from junction.canary.policy import policies
from junction.canary.state import CanaryEvent, CanaryState
from junction.config.model import Config

__all__ = ["LIVE_HORIZON", "LIVE_SLOT", "LIVE_TICK", "ManualClock", "ReplayResult", "replay"]

#: The live receiver's settings (``junction.loop.service.AlsSettings``' defaults): the
#: controller's period, the windows' slot and horizon. Replay and simulation use the
#: same, so what they decide is what a live replica would have decided.
LIVE_TICK = 0.5
LIVE_SLOT = 1.0
LIVE_HORIZON = 300.0


class ManualClock:
    """A clock that moves only when told (``now`` is read by the windows and controller)."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class ReplayResult:
    """What a replay saw and decided."""

    #: Every event the controller recorded (starts, decisions), in order.
    events: list[CanaryEvent] = field(default_factory=list)
    records: int = 0
    bad_lines: int = 0
    ticks: int = 0
    #: Log time of the first record and of the last tick (None: no record).
    start: float | None = None
    end: float | None = None
    #: The final state of every ramped service.
    states: dict[str, CanaryState] = field(default_factory=dict)


class _Run:
    """One replay's moving parts; :meth:`advance` ticks up to a log time."""

    def __init__(self, config: Config, tick: float, slot: float, horizon: float) -> None:
        self.clock = ManualClock()
        self.windows = Windows(slot_seconds=slot, horizon=horizon, clock=self.clock)
        self.store = MemoryStateStore()
        self.controller = CanaryController(
            self.store, self.windows, lambda: config, tick=tick, clock=self.clock
        )
        self.tick = tick
        self.pending: list[tuple[float, int, LogRecord]] = []
        self.start = 0.0
        self.next_tick: float | None = None
        self.ticks = 0

    async def advance(self, until: float, sink: Callable[[CanaryEvent], None]) -> None:
        """Tick at every tick time <= ``until``, feeding the records ended by then."""
        assert self.next_tick is not None
        while self.next_tick <= until:
            now = self.next_tick
            ready = []
            while self.pending and self.pending[0][0] <= now:
                ready.append(heapq.heappop(self.pending)[2])
            self.clock.now = now
            if ready:
                self.windows.add(ready)
            await self.controller.tick()
            self.ticks += 1
            events = self.controller.events
            while events:
                sink(events.popleft())
            # Multiplying keeps tick times exact over long logs (no drift from summing).
            self.next_tick = self.start + self.ticks * self.tick


async def replay(
    config: Config,
    lines: Iterable[LogRecord | BadLine],
    *,
    tick: float = LIVE_TICK,
    slot_seconds: float = LIVE_SLOT,
    horizon: float = LIVE_HORIZON,
    lookahead: float = 10.0,
    on_event: Callable[[CanaryEvent], None] | None = None,
    on_bad_line: Callable[[BadLine], None] | None = None,
) -> ReplayResult:
    """Run the controller over ``lines`` (see the module docstring); ``on_event`` gets each
    event as it is decided, ``on_bad_line`` each line that is not a record."""
    if tick <= 0 or lookahead < 0:
        raise ValueError("need tick > 0 and lookahead >= 0")
    result = ReplayResult()

    def record_event(event: CanaryEvent) -> None:
        result.events.append(event)
        if on_event is not None:
            on_event(event)

    run = _Run(config, tick, slot_seconds, horizon)
    seq = 0
    last_end = float("-inf")
    for item in lines:
        if isinstance(item, BadLine):
            result.bad_lines += 1
            if on_bad_line is not None:
                on_bad_line(item)
            continue
        result.records += 1
        if run.next_tick is None:
            run.start = run.next_tick = item.t
            result.start = item.t
        end = item.t + item.ms * 0.001
        last_end = max(last_end, end)
        heapq.heappush(run.pending, (end, seq, item))
        seq += 1
        # Every record ending before ``item.t - lookahead`` has been read by now.
        await run.advance(item.t - lookahead, record_event)
    if run.next_tick is not None:
        await run.advance(last_end, record_event)
        while run.pending:  # the records ending after the last tick time <= last_end
            await run.advance(run.next_tick, record_event)
        result.end = run.next_tick - tick
    result.ticks = run.ticks
    for service in policies(config):
        state = run.store.state(service)
        if state is not None:
            result.states[service] = state
    return result
