"""Small asyncio helpers shared by the long-running services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import MutableSequence

__all__ = ["cancel_all"]


async def cancel_all(tasks: MutableSequence[asyncio.Task[None]]) -> None:
    """Cancel every task, wait for each to finish, and empty ``tasks``.

    Cancelling first and awaiting after lets the tasks unwind concurrently; a task's own
    CancelledError is expected and swallowed, any other exception propagates.
    """
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
