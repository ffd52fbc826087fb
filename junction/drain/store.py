"""Where drains live: shared by every control-plane replica, surviving restarts.

Two implementations of :class:`DrainStore`:

- :class:`ConsulDrainStore`: one KV key per drain, ``junction-state/drain/SERVICE/INSTANCE``
  (beside the canary states under Junction's own ``junction-state/`` prefix, which the
  human-written config never uses), value the record as JSON. Undrain deletes the key.
  Every replica watches the prefix with a blocking query (``?recurse&index=N&wait=D``,
  https://developer.hashicorp.com/consul/api-docs/features/blocking), so a drain reaches
  all of them within milliseconds.
- :class:`FileDrainStore`: one JSON file ``drains.json`` in a directory
  (``STATE_DIR/drain/``; the embedded default, no Consul), rewritten under an exclusive
  ``flock`` and renamed into place (atomic on POSIX); watched by polling its signature every 0.2 s.

A stored value that is not a drain record is reported as a problem (named by key or file)
and otherwise ignored, so one corrupt key does not hide the others.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
import orjson

from junction.drain.model import DrainError, DrainRecord, check_names

__all__ = [
    "DEFAULT_PREFIX",
    "ConsulDrainStore",
    "DrainStore",
    "FileDrainStore",
    "StoreUnavailable",
    "Stored",
    "make_drain_store",
]

log = logging.getLogger("junction.drain")

DEFAULT_PREFIX = "junction-state/drain/"
FILE_NAME = "drains.json"


class StoreUnavailable(DrainError):
    """The drain store cannot be read or written (the message names it)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """Every drain in the store, and the problems of values that are not drains."""

    index: int
    drains: tuple[DrainRecord, ...]
    problems: tuple[str, ...] = ()


class DrainStore(abc.ABC):
    """Drains by (service, instance). Methods raise :class:`StoreUnavailable`."""

    #: Shown in /status (``consul:junction-state/drain/``, ``file:DIR/drains.json``).
    origin: str

    @abc.abstractmethod
    async def put(self, record: DrainRecord) -> None:
        """Store ``record`` (replacing a drain of the same instance)."""

    @abc.abstractmethod
    async def delete(self, service: str, instance: str) -> bool:
        """Remove the drain; False when there was none."""

    @abc.abstractmethod
    async def wait_change(self, index: int) -> Stored:
        """Every drain, once the store's index differs from ``index`` (0: at once) or the
        watch's wait ran out."""

    async def read_all(self) -> Stored:
        return await self.wait_change(0)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _parse(where: str, raw: bytes | str | None) -> tuple[DrainRecord | None, str | None]:
    try:
        return DrainRecord.from_json(orjson.loads(raw or b"")), None
    except (orjson.JSONDecodeError, DrainError) as exc:
        return None, f"{where}: not a drain record ({exc})"


# ---- files -------------------------------------------------------------------------------


class FileDrainStore(DrainStore):
    """``drains.json`` in ``directory`` (created on the first write)."""

    def __init__(
        self, directory: str | os.PathLike[str], *, poll: float = 0.2, wait: float = 30.0
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.origin = f"file:{self.path}"
        self._poll = poll
        self._wait = wait

    def _load(self) -> Stored:
        try:
            raw = self.path.read_bytes()
            st = os.stat(self.path)
        except FileNotFoundError:
            return Stored(1, ())
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: cannot read: {exc.strerror}") from None
        index = hash((st.st_ino, st.st_mtime_ns, st.st_size)) & 0x7FFFFFFF or 1
        try:
            items = orjson.loads(raw)["drains"]
            if not isinstance(items, list):
                raise TypeError("drains is not a list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            # Not "no drains": that would undrain everything. The watcher keeps the last
            # drains it read; a write replaces the file.
            raise StoreUnavailable(f"{self.path}: not a drains file ({exc})") from None
        drains, problems = [], []
        for n, item in enumerate(items):
            record, problem = _parse(f"{self.path}: drains[{n}]", orjson.dumps(item))
            if record is not None:
                drains.append(record)
            if problem is not None:
                problems.append(problem)
        return Stored(index, tuple(drains), tuple(problems))

    def _update(self, service: str, instance: str, record: DrainRecord | None) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / ".drains.lock", "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    current = self._load()
                except StoreUnavailable as exc:
                    log.warning("%s; replacing it", exc)
                    current = Stored(0, ())
                kept = [d for d in current.drains if d.key != (service, instance)]
                found = len(kept) != len(current.drains)
                if record is not None:
                    kept.append(record)
                kept.sort(key=lambda d: d.key)
                body = orjson.dumps(
                    {"drains": [d.to_json() for d in kept]}, option=orjson.OPT_INDENT_2
                )
                tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
                tmp.write_bytes(body)
                os.replace(tmp, self.path)
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: cannot write: {exc.strerror}") from None
        return found

    async def put(self, record: DrainRecord) -> None:
        await asyncio.to_thread(self._update, record.service, record.instance, record)

    async def delete(self, service: str, instance: str) -> bool:
        return await asyncio.to_thread(self._update, service, instance, None)

    async def wait_change(self, index: int) -> Stored:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            stored = self._load()
            if stored.index != index or loop.time() >= deadline:
                return stored
            await asyncio.sleep(self._poll)


# ---- Consul ------------------------------------------------------------------------------

# What a Consul call can fail with that says "the store is unavailable" (py-consul raises
# ConsulException for 5xx, 4xx such as ACL denials, and undecodable bodies).
_UNAVAILABLE = (aiohttp.ClientError, asyncio.TimeoutError, OSError, consul.ConsulException)


class ConsulDrainStore(DrainStore):
    """Drains under ``prefix`` in Consul KV, through py-consul's asyncio client.

    ``address`` is ``HOST:PORT`` (``http://`` or ``https://`` may come first); the ACL
    token is py-consul's default (``CONSUL_HTTP_TOKEN``). ``wait``: seconds a watch blocks.
    """

    def __init__(self, address: str, *, prefix: str = DEFAULT_PREFIX, wait: float = 30.0) -> None:
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise DrainError(f"drain prefix {prefix!r} must end with '/' and not start with '/'")
        parts = urlsplit(address if "//" in address else f"//{address}")
        try:
            host, port = parts.hostname, parts.port or 8500
        except ValueError:
            host = None
        if not host:
            raise DrainError(f"consul address {address!r} is not HOST:PORT")
        self._host = f"[{host}]" if ":" in host else host
        self._port = port
        self._scheme = parts.scheme or "http"
        self.address = address
        self.prefix = prefix
        self.origin = f"consul:{prefix}"
        self._wait = wait
        self._client: Any = None

    def _c(self) -> Any:
        if self._client is None:
            with warnings.catch_warnings():
                # py-consul builds its aiohttp connector with arguments aiohttp deprecates.
                warnings.simplefilter("ignore", DeprecationWarning)
                self._client = consul.aio.Consul(
                    host=self._host, port=self._port, scheme=self._scheme
                )
        return self._client

    async def _call(self, what: str, make: Any) -> Any:
        try:
            return await asyncio.wait_for(make(), self._wait + self._wait / 16 + 5)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"{what}: consul at {self.address}: {exc or type(exc).__name__}"
            ) from None

    def _key(self, service: str, instance: str) -> str:
        check_names(service, instance)
        return f"{self.prefix}{service}/{instance}"

    async def put(self, record: DrainRecord) -> None:
        key = self._key(record.service, record.instance)
        body = orjson.dumps(record.to_json())
        await self._call(f"writing {key}", lambda: self._c().kv.put(key, body))

    async def delete(self, service: str, instance: str) -> bool:
        key = self._key(service, instance)
        _, entry = await self._call(f"reading {key}", lambda: self._c().kv.get(key))
        if entry is None:
            return False
        await self._call(f"deleting {key}", lambda: self._c().kv.delete(key))
        return True

    async def wait_change(self, index: int) -> Stored:
        raw_index, entries = await self._call(
            f"watching {self.prefix}",
            lambda: self._c().kv.get(
                self.prefix,
                recurse=True,
                index=index or None,
                wait=f"{round(self._wait * 1000)}ms" if index else None,
            ),
        )
        try:
            new_index = max(int(raw_index), 1)
        except (TypeError, ValueError):
            raise StoreUnavailable(
                f"watching {self.prefix}: X-Consul-Index {raw_index!r} is not an integer"
            ) from None
        drains, problems = [], []
        for entry in entries or ():
            key = str(entry.get("Key", ""))
            if key.endswith("/"):
                continue  # a "folder" key
            record, problem = _parse(key, entry.get("Value"))
            if record is not None and key != self._key(record.service, record.instance):
                problem = f"{key}: a drain of {record.key} stored under another key"
                record = None
            if record is not None:
                drains.append(record)
            if problem is not None:
                problems.append(problem)
        drains.sort(key=lambda d: d.key)
        return Stored(new_index, tuple(drains), tuple(problems))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


def make_drain_store(
    *, consul_addr: str | None = None, state_dir: str | os.PathLike[str] | None = None
) -> DrainStore:
    """Consul KV when ``consul_addr`` is given and no ``state_dir``, else
    ``STATE_DIR/drain/drains.json`` (``STATE_DIR``: the canary's state directory, default
    :func:`junction.canary.store.default_state_dir`; a subdirectory, because the canary
    store reads every ``*.json`` of its own directory as a canary state)."""
    if consul_addr and not state_dir:
        return ConsulDrainStore(consul_addr)
    if state_dir is None:
        from junction.canary.store import default_state_dir

        state_dir = default_state_dir()
    return FileDrainStore(Path(state_dir) / "drain")
