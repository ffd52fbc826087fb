"""The canary's command path when the store will not take a write: a compare-and-set that
keeps losing to other writers (503 after the bounded retries), and a state directory or
file that cannot be created or written (503 naming the path; the last state is kept).
Over HTTP (the API's aiohttp routes on loopback), with a real FileStateStore."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_canary_cli import CONFIG

from junction.canary.api import CanaryApi
from junction.canary.errors import StoreError
from junction.canary.policy import policies
from junction.canary.source import CanaryBoard
from junction.canary.state import CanaryState
from junction.canary.step import initial_state
from junction.canary.store import FileStateStore, Stored


class RivalStore(FileStateStore):
    """A file store another replica also writes: after each of our reads, for the first
    ``rival_writes`` reads, the rival writes the state once more (bumping its index)."""

    def __init__(self, directory: Path, rival_writes: int) -> None:
        super().__init__(directory)
        self.rival_writes = rival_writes
        self.reads = 0
        self.rival_wrote = 0

    async def get(self, service: str) -> Stored | None:
        stored = await super().get(service)
        self.reads += 1
        if self.rival_wrote < self.rival_writes and stored is not None and stored.state:
            assert await super().put(stored.state, index=stored.index)
            self.rival_wrote += 1
        return stored


@contextlib.asynccontextmanager
async def serve(api: CanaryApi) -> AsyncIterator[str]:
    app = web.Application()
    api.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def post(base: str, path: str) -> tuple[int, dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.post(base + path) as resp:
        return resp.status, await resp.json()


async def seeded(store: FileStateStore) -> CanaryState:
    """A stored ramping state at its first step, as the controller's start leaves it."""
    state = initial_state(policies(CONFIG)["web-api"], 1000.0)
    assert await store.put(state, index=0)
    stored = await store.get("web-api")
    assert stored is not None and stored.state == state
    return state


@pytest.mark.parametrize(("rival_writes", "status"), [(4, 200), (5, 503), (50, 503)])
async def test_a_command_gives_up_after_repeated_cas_conflicts(
    tmp_path: Path, rival_writes: int, status: int
) -> None:
    store = RivalStore(tmp_path / "state", rival_writes=0)
    before = await seeded(store)
    store.rival_writes, store.reads = rival_writes, 0
    api = CanaryApi(store, CanaryBoard(), lambda: CONFIG)  # 5 attempts (the default)
    async with serve(api) as base:
        code, body = await post(base, "/canary/web-api/pause")
    assert code == status, body
    stored = await store.get("web-api")
    assert stored is not None and stored.state is not None
    if status == 503:
        # Five reads, each beaten by the rival; nothing of ours was written.
        assert store.reads == 5 + 1  # (+1: the read just above)
        assert body == {"error": "web-api: the state kept changing under the command (5 tries)"}
        assert stored.state == before and stored.state.phase == "ramping"
    else:
        # Beaten four times, the fifth try wins.
        assert body["state"]["phase"] == "paused"
        assert stored.state.phase == "paused"


def unwritable_dir(tmp_path: Path) -> FileStateStore:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    return FileStateStore(blocker / "state")


async def test_a_state_directory_that_cannot_be_created_is_a_503(tmp_path: Path) -> None:
    store = unwritable_dir(tmp_path)  # its parent is a regular file (works as root too)
    api = CanaryApi(store, CanaryBoard(), lambda: CONFIG)
    async with serve(api) as base:
        code, body = await post(base, "/canary/web-api/pause")
    # The command's first read already fails, naming the file it wanted.
    assert code == 503
    state_dir = tmp_path / "a-file" / "state"
    assert body["error"] == f"{state_dir / 'web-api.json'}: cannot read: Not a directory"
    # A write (the controller's first) names the directory it could not create.
    with pytest.raises(StoreError) as info:
        await store.put(initial_state(policies(CONFIG)["web-api"], 1000.0), index=0)
    assert str(info.value) == (
        f"file:{state_dir}: cannot create the directory: [Errno 20] Not a directory: '{state_dir}'"
    )


async def test_a_state_file_that_cannot_be_written_is_a_503_and_the_last_state_stays(
    tmp_path: Path,
) -> None:
    store = FileStateStore(tmp_path / "state")
    before = await seeded(store)
    # The next write goes to a full disk: the store's temporary file is /dev/full.
    path = tmp_path / "state" / "web-api.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.symlink_to("/dev/full")
    api = CanaryApi(store, CanaryBoard(), lambda: CONFIG)
    async with serve(api) as base:
        code, body = await post(base, "/canary/web-api/pause")
    assert code == 503
    assert body["error"] == f"{path}: cannot write: No space left on device"
    stored = await store.get("web-api")
    assert stored is not None and stored.state == before  # the last good state is kept
    assert not tmp.is_symlink() and not tmp.exists()  # no half-written file left behind
    # Once the disk has room again, the same command goes through.
    async with serve(api) as base:
        code, body = await post(base, "/canary/web-api/pause")
    assert code == 200 and body["state"]["phase"] == "paused"
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "web-api.json"]
