"""Where canary states live: shared by replicas, surviving restarts, written with CAS.

Two implementations of one small interface (:class:`StateStore`):

- :class:`ConsulStateStore`: one KV key per service under ``junction-state/canary/``, a
  prefix the human-written config never uses (so a config watcher never sees a state and a
  state never overwrites config). Writes are check-and-set on the key's ``ModifyIndex``
  (``PUT /v1/kv/KEY?cas=N``; ``cas=0`` creates only if absent,
  https://developer.hashicorp.com/consul/api-docs/kv#cas), so when two replicas' controllers
  decide the same step, one write wins and the other re-reads. Changes are watched with a
  blocking query on the prefix (``?recurse&index=N&wait=D``).
- :class:`FileStateStore`: one JSON file per service in a directory (the embedded default,
  no Consul). CAS is emulated: a write counter stored in the file, compared under an
  exclusive ``flock`` on ``<dir>/.lock``, and the new file renamed into place (atomic on
  POSIX). Watching polls the directory's file signatures every 0.2 s.

Both report a stored value that is not a valid state as a problem (named by key or file)
and otherwise ignore it, so one corrupt key does not hide the others.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import os
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from junction.canary.errors import StateFormatError, StoreError
from junction.canary.state import CanaryState

# The Consul endpoint handling (address parsing, py-consul client set-up, error wording)
# is shared with the config and catalog sources, not repeated here.
from junction.catalog.consul import (
    TRANSIENT_ERRORS,
    ConsulEndpoint,
    WatchTiming,
    next_index,
    parse_index,
)

__all__ = [
    "DEFAULT_PREFIX",
    "ConsulStateStore",
    "FileStateStore",
    "StateStore",
    "Stored",
    "default_state_dir",
    "make_store",
]

T = TypeVar("T")

#: The KV prefix of canary states. Junction's config lives under keys the operator
#: chooses (``--consul-key``); this prefix is reserved for state Junction writes itself.
DEFAULT_PREFIX = "junction-state/canary/"


@dataclass(frozen=True, slots=True)
class Stored:
    """One service's stored state and its CAS index. ``state`` None: the stored value is
    not a valid state (``problem`` says why); writing at ``index`` replaces it."""

    index: int
    state: CanaryState | None
    problem: str | None = None


def _parse(where: str, raw: bytes | str | None) -> tuple[CanaryState | None, str | None]:
    try:
        return CanaryState.loads(raw or b""), None
    except StateFormatError as exc:
        return None, f"{where}: not a canary state ({exc})"


class StateStore(abc.ABC):
    """Canary states by service. All methods raise :class:`StoreError` when the store
    cannot be reached; none raises for a bad stored value (see :class:`Stored`)."""

    #: Shown in /status and errors (``consul:junction-state/canary/``, ``file:DIR``).
    origin: str

    @abc.abstractmethod
    async def get(self, service: str) -> Stored | None:
        """The stored state of ``service`` (None: nothing stored)."""

    @abc.abstractmethod
    async def put(self, state: CanaryState, *, index: int) -> bool:
        """Write ``state`` if the stored index is still ``index`` (0: only if absent).
        False when another writer got there first."""

    @abc.abstractmethod
    async def wait_change(self, index: int) -> tuple[int, dict[str, Stored]]:
        """Every stored state, once the store's index differs from ``index`` (0: now) or the
        watch's wait ran out; returns the new index too."""

    async def read_all(self) -> dict[str, Stored]:
        _, stored = await self.wait_change(0)
        return stored

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (the store may be used again afterwards)."""


# ---- files -------------------------------------------------------------------------------


class FileStateStore(StateStore):
    """One ``<service>.json`` per service in ``directory`` (created when missing)."""

    def __init__(
        self, directory: str | os.PathLike[str], *, poll: float = 0.2, wait: float = 30.0
    ) -> None:
        self.directory = Path(directory)
        self.origin = f"file:{self.directory}"
        self._poll = poll
        self._wait = wait

    def _path(self, service: str) -> Path:
        if not service or "/" in service or service.startswith("."):
            raise StoreError(f"{service!r} is not a service name")
        return self.directory / f"{service}.json"

    def _ensure(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.origin}: cannot create the directory: {exc}") from None

    @staticmethod
    def _read(path: Path) -> Stored | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            doc = orjson.loads(raw)
            index = int(doc["index"])
            state = CanaryState.from_json(doc["state"])
        except (ValueError, KeyError, TypeError, StateFormatError) as exc:
            # Index 0 would be "absent"; a corrupt file is replaced by writing at -1.
            return Stored(-1, None, f"{path}: not a canary state file ({exc})")
        return Stored(index, state)

    async def get(self, service: str) -> Stored | None:
        return self._read(self._path(service))

    async def put(self, state: CanaryState, *, index: int) -> bool:
        return await asyncio.to_thread(self._put, state, index)

    def _put(self, state: CanaryState, index: int) -> bool:
        self._ensure()
        path = self._path(state.service)
        try:
            with open(self.directory / ".lock", "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self._read(path)
                held = 0 if current is None else current.index
                if held != index:
                    return False
                body = orjson.dumps({"index": max(held, 0) + 1, "state": state.to_json()})
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                try:
                    tmp.write_bytes(body)
                    os.replace(tmp, path)
                except OSError:
                    with contextlib.suppress(OSError):
                        tmp.unlink()  # no half-written file left behind (e.g. disk full)
                    raise
        except OSError as exc:
            raise StoreError(f"{path}: cannot write: {exc.strerror}") from None
        return True

    def _signature(self) -> tuple[int, dict[str, Path]]:
        try:
            entries = sorted(
                (p for p in self.directory.glob("*.json") if not p.name.startswith(".")),
                key=lambda p: p.name,
            )
            sig = []
            for p in entries:
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    sig.append((p.name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError as exc:
            raise StoreError(f"{self.origin}: cannot list: {exc.strerror}") from None
        # Never 0: an index of 0 means "answer at once" to wait_change.
        index = zlib.crc32(repr(sig).encode()) or 1
        return index, {p.name[: -len(".json")]: p for p in entries}

    async def wait_change(self, index: int) -> tuple[int, dict[str, Stored]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            current, paths = self._signature()
            if current != index or loop.time() >= deadline:
                out = {}
                for service, path in paths.items():
                    stored = self._read(path)
                    if stored is not None:
                        out[service] = stored
                return current, out
            await asyncio.sleep(self._poll)


# ---- Consul ------------------------------------------------------------------------------


class ConsulStateStore(StateStore):
    """States under ``prefix`` in Consul KV, through py-consul's asyncio client."""

    def __init__(
        self,
        address: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        token: str | None = None,
        scheme: str = "http",
        verify: bool | str = True,
        timing: WatchTiming | None = None,
    ) -> None:
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise StoreError(f"state prefix {prefix!r} must end with '/' and not start with '/'")
        self.prefix = prefix
        self.origin = f"consul:{prefix}"
        self._endpoint = ConsulEndpoint(address, token, scheme, verify, timing or WatchTiming())
        self._client: Any = None

    def _c(self) -> Any:
        if self._client is None:
            self._client = self._endpoint.client()
        return self._client

    async def _call(self, what: str, make: Callable[[], Any]) -> Any:
        try:
            return await make()
        except TRANSIENT_ERRORS as exc:
            raise StoreError(f"{what}: {self._endpoint.describe(exc)}") from None

    async def request(self, what: str, call: Callable[[Any], Awaitable[T]]) -> T:
        """``call(client)`` on this store's py-consul client: for the leader election and
        the evidence published beside the states (:mod:`junction.canary.leader`,
        :mod:`junction.canary.fleet`). Raises :class:`StoreError` naming ``what`` and the
        address when Consul cannot be reached or answers an error."""
        result: T = await self._call(what, lambda: call(self._c()))
        return result

    def _key(self, service: str) -> str:
        if not service or "/" in service:
            raise StoreError(f"{service!r} is not a service name")
        return self.prefix + service

    async def get(self, service: str) -> Stored | None:
        key = self._key(service)
        _, entry = await self._call(f"reading {key}", lambda: self._c().kv.get(key))
        if entry is None:
            return None
        state, problem = _parse(key, entry.get("Value"))
        return Stored(int(entry["ModifyIndex"]), state, problem)

    async def put(self, state: CanaryState, *, index: int) -> bool:
        key = self._key(state.service)
        ok = await self._call(
            f"writing {key}", lambda: self._c().kv.put(key, state.dumps(), cas=max(index, 0))
        )
        return bool(ok)

    async def wait_change(self, index: int) -> tuple[int, dict[str, Stored]]:
        timing = self._endpoint.timing
        raw_index, entries = await self._call(
            f"watching {self.prefix}",
            lambda: self._c().kv.get(
                self.prefix,
                recurse=True,
                index=index or None,
                wait=timing.wait_param if index else None,
            ),
        )
        try:
            new_index = next_index(index, parse_index(raw_index))
        except ValueError as exc:
            raise StoreError(f"watching {self.prefix}: {exc}") from None
        out: dict[str, Stored] = {}
        for entry in entries or ():
            key = str(entry.get("Key", ""))
            service = key[len(self.prefix) :]
            if not service or "/" in service:
                continue  # a "folder" key or something deeper: not ours
            state, problem = _parse(key, entry.get("Value"))
            out[service] = Stored(int(entry["ModifyIndex"]), state, problem)
        return new_index, out

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/junction/canary`` (``~/.local/state/junction/canary``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "junction" / "canary"


def make_store(
    *,
    consul_addr: str | None = None,
    state_dir: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    timing: WatchTiming | None = None,
) -> StateStore:
    """Consul KV when ``consul_addr`` is given (and no ``state_dir``), else files in
    ``state_dir`` (default :func:`default_state_dir`)."""
    if consul_addr and not state_dir:
        return ConsulStateStore(consul_addr, prefix=prefix, timing=timing)
    return FileStateStore(state_dir or default_state_dir())
