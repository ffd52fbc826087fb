"""The embedded default: config and instances from local files, watched for changes.

The instances file (SPEC.md section 2)::

    services:
      web-api-perl:
        - {address: 127.0.0.1, port: 18080, zone: zone-a, region: r1, status: passing}

Files are polled (stat every ``interval`` seconds, re-read when size, mtime or inode
change): portable, no extra dependency, and well inside the 1 s a change must take.
Editors that replace a file (write + rename) are handled because the inode is watched too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError

from junction.catalog.model import Health, Instance
from junction.catalog.source import CatalogSource, ConfigSource, SourceSink
from junction.config.errors import ConfigError
from junction.config.load import validate_document
from junction.config.model import CLUSTER_NAME, IpAddress, Port
from junction.config.yamldoc import parse_yaml

__all__ = ["FileCatalog", "FileConfig", "load_instances"]

_STATUS = {
    "passing": Health.HEALTHY,
    "warning": Health.DEGRADED,
    "critical": Health.UNHEALTHY,
    "maintenance": Health.DRAINING,
}


class _InstanceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    address: IpAddress
    port: Port
    zone: str = ""
    region: str = ""
    status: Literal["passing", "warning", "critical", "maintenance"] = "passing"
    weight: int = 1
    node: str = ""
    tags: tuple[str, ...] = ()
    id: str = ""

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: int) -> int:
        if not 1 <= value <= 128:
            raise PydanticCustomError("junction", "must be an integer 1..128")
        return value


class _InstancesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    services: dict[str, list[_InstanceEntry]] = {}

    @field_validator("services")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not CLUSTER_NAME.match(name):
                raise PydanticCustomError("junction", f"service name {name!r} is not valid")
        return value


def load_instances(text: str, origin: str) -> dict[str, tuple[Instance, ...]]:
    """Parse an instances file; raise :class:`ConfigError` with path-named problems."""
    doc = parse_yaml(text, origin)
    if doc.data is None:
        return {}
    parsed = validate_document(doc, _InstancesFile, origin)
    return {
        name: tuple(
            sorted(
                Instance(
                    address=e.address,
                    port=e.port,
                    zone=e.zone,
                    region=e.region,
                    health=_STATUS[e.status],
                    weight=e.weight,
                    node=e.node,
                    tags=e.tags,
                    id=e.id,
                )
                for e in entries
            )
        )
        for name, entries in parsed.services.items()
    }


async def _watch_text(path: Path, interval: float) -> Any:
    """Yield ``(text, error)`` whenever the file's identity changes; text None on error."""
    last: tuple[int, int, int] | None = None
    missing_reported = False
    while True:
        try:
            st = os.stat(path)
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            if ident != last:
                last = ident
                missing_reported = False
                yield path.read_text(encoding="utf-8"), None
        except (OSError, UnicodeDecodeError) as exc:
            if not missing_reported:
                missing_reported = True
                last = None
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                yield None, f"cannot read {path}: {reason}"
        await asyncio.sleep(interval)


class FileConfig(ConfigSource):
    """The config document in a local file."""

    def __init__(self, path: str | os.PathLike[str], interval: float = 0.2) -> None:
        self.path = Path(path)
        self.origin = str(path)
        self.interval = interval

    async def run(self, sink: SourceSink) -> None:
        async for text, error in _watch_text(self.path, self.interval):
            if error is not None:
                sink.source_error(self.origin, error)
            else:
                sink.config_text(self.origin, text)


class FileCatalog(CatalogSource):
    """Instances from a local instances file; services not in the file have no instances."""

    def __init__(self, path: str | os.PathLike[str], interval: float = 0.2) -> None:
        self.path = Path(path)
        self.origin = str(path)
        self.interval = interval
        self._wanted: frozenset[str] = frozenset()
        self._latest: dict[str, tuple[Instance, ...]] | None = None
        self._sink: SourceSink | None = None

    def watch(self, services: frozenset[str]) -> None:
        added = services - self._wanted
        self._wanted = services
        if self._sink is not None and self._latest is not None:
            self._report(self._sink, added)

    def _report(self, sink: SourceSink, services: Iterable[str]) -> None:
        assert self._latest is not None
        for name in sorted(services):
            sink.instances(name, self._latest.get(name, ()))

    async def run(self, sink: SourceSink) -> None:
        self._sink = sink
        async for text, error in _watch_text(self.path, self.interval):
            if error is not None:
                sink.source_error(self.origin, error)
                continue
            try:
                latest = load_instances(text, self.origin)
            except ConfigError as exc:
                # Keep the last good instances; say what is wrong.
                sink.source_error(self.origin, exc.render())
                continue
            self._latest = latest
            sink.source_ok(self.origin)
            self._report(sink, self._wanted)
