"""An asyncio event loop on virtual time, for tests of code that paces itself with
``asyncio.sleep`` and a clock (coalescing, grace periods, rate limits).

:class:`VirtualTimeLoop` is a plain selector loop whose ``time()`` is a number that moves
only when the loop is idle: when no callback is ready and no socket has an event, instead
of blocking until the next timer it jumps its clock to that timer. Code under test sees
every ``sleep`` take exactly as long as asked, however loaded the machine, and a test
reads elapsed time from ``loop.time()`` (inject it as the code's clock). Real I/O still
works (a socket event is taken at once), but a wait on another thread or process is not
seen as activity, so keep such tests free of them.

:func:`on_virtual_time` runs an ``async def`` test on a fresh such loop.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

__all__ = ["VirtualTimeLoop", "on_virtual_time"]

P = ParamSpec("P")


class _Clock:
    now = 0.0


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without blocking; when nothing is ready, advances the clock by the timeout
    the loop would have blocked for (the time to its next timer)."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return super().select(None)  # type: ignore[no-any-return]
        events = super().select(0)
        if not events and timeout > 0:
            self._clock.now += timeout
        return events  # type: ignore[no-any-return]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock starts at 0 and jumps over idle time."""

    def __init__(self) -> None:
        self._virtual = _Clock()
        super().__init__(_JumpingSelector(self._virtual))

    def time(self) -> float:
        return self._virtual.now


def on_virtual_time(
    test: Callable[P, Coroutine[Any, Any, None]],
) -> Callable[P, None]:
    """Run the coroutine test function on a fresh :class:`VirtualTimeLoop` (a plain
    function to pytest, so no other plugin runs it)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run
