"""Applying drains: :class:`DrainSource` watches the store, :class:`DrainingCatalog` marks
drained instances DRAINING on their way from the catalog source to the publisher.

:class:`DrainingCatalog` is a :class:`~junction.catalog.source.SourceSink` placed between
a catalog source and the real sink (the publisher): the publisher never knows about drains,
it just sees DRAINING instances, exactly as for Consul's maintenance mode (SPEC.md section
2). When the drains change, the instances of the services concerned are reported again.
Every replica runs its own source and adapter over the shared store, so each applies every
drain; on restart the store is read first, so drains survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from junction.catalog.consul import Backoff, TokenBucket
from junction.catalog.model import Instance
from junction.catalog.source import SourceSink
from junction.drain.model import DrainRecord, apply_drains, check_drain, instance_label, matches
from junction.drain.store import DrainStore, StoreUnavailable

__all__ = ["DrainSource", "DrainingCatalog"]

log = logging.getLogger("junction.drain")


class DrainingCatalog:
    """A ``SourceSink`` forwarding to ``sink``, with drained instances set to DRAINING."""

    def __init__(self, sink: SourceSink) -> None:
        self._sink = sink
        self._raw: dict[str, tuple[Instance, ...]] = {}
        self.drains: dict[tuple[str, str], DrainRecord] = {}
        self.origin: str | None = None
        self.error: str | None = None
        # Until the store has been read once, catalog reports are held back, so that after
        # a restart a drained instance is not published as serving for a moment.
        self._holding = True

    # -- SourceSink (from the catalog source)

    def config_text(self, origin: str, text: str) -> None:
        self._sink.config_text(origin, text)

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        self._raw[service] = tuple(instances)
        if not self._holding:
            self._forward(service)

    def source_error(self, origin: str, message: str) -> None:
        self._sink.source_error(origin, message)

    def source_ok(self, origin: str) -> None:
        self._sink.source_ok(origin)

    # -- from the DrainSource

    def drain_records(self, origin: str, records: Iterable[DrainRecord]) -> None:
        """The complete set of drains (a drain absent here is undone)."""
        new = {r.key: r for r in records}
        changed = {s for s, _ in new.keys() ^ self.drains.keys()}
        for key in new.keys() & self.drains.keys():
            if new[key].forced != self.drains[key].forced:
                changed.add(key[0])
        for key in sorted(new.keys() - self.drains.keys()):
            log.info("drain applied: %s %s (%s)", *key, new[key].reason or "no reason given")
        for key in sorted(self.drains.keys() - new.keys()):
            log.info("drain undone: %s %s", *key)
        self.origin, self.drains = origin, new
        if self._holding:
            self._holding = False
            changed = set(self._raw)
        for service in sorted(changed):
            if service in self._raw:
                self._forward(service)

    def release(self) -> None:
        """Stop holding catalog reports back although the store was never read (it is
        unreachable): serving without drains beats serving nothing. The app calls it a
        moment after start, well within the publisher's ``catalog_grace``."""
        if self._holding:
            self._holding = False
            log.warning("drain store not read yet; applying instances without drains")
            for service in sorted(self._raw):
                self._forward(service)

    def drain_error(self, origin: str, message: str | None) -> None:
        if message != self.error:
            if message:
                log.warning("drains from %s: %s (keeping the last drains read)", origin, message)
            else:
                log.info("drains from %s: readable again", origin)
        self.error = message

    # -- views

    def drained(self, service: str) -> list[str]:
        return sorted(i for s, i in self.drains if s == service)

    def catalog_instances(self, service: str) -> tuple[Instance, ...]:
        """What the catalog reports for ``service``, drains not applied."""
        return self._raw.get(service, ())

    def check(self, service: str, instance: str, envoy: Mapping[str, bool] | None = None) -> str:
        """:func:`~junction.drain.model.check_drain` against the current catalog and drains
        (and Envoy's view of the hosts, when given)."""
        others = [i for i in self.drained(service) if i != instance]
        return check_drain(service, instance, self.catalog_instances(service), others, envoy)

    def _forward(self, service: str) -> None:
        self._sink.instances(service, apply_drains(self._raw[service], self.drained(service)))

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The ``drains`` section of /status: every drain with its reason and age."""
        now = time.time() if now is None else now
        return {
            "store": self.origin,
            "error": self.error,
            "drains": [
                {
                    **r.to_json(),
                    "age": round(max(0.0, now - r.since), 1),
                    "matches": [
                        instance_label(i)
                        for i in self.catalog_instances(r.service)
                        if matches(i, r.instance)
                    ],
                }
                for _, r in sorted(self.drains.items())
            ],
        }


class DrainSource:
    """Watches a :class:`DrainStore`; reports every change to a :class:`DrainingCatalog`.

    Never stops on an unreachable store or a bad value: it reports the problem, keeps the
    last drains it read applied, and retries with jittered exponential backoff.
    """

    def __init__(self, store: DrainStore, *, backoff: Backoff | None = None) -> None:
        self.store = store
        self._backoff = backoff or Backoff()

    async def run(self, sink: DrainingCatalog) -> None:
        index = 0
        failures = 0
        reported: tuple[DrainRecord, ...] | None = None
        # A store answering at once again and again must not become a busy loop; a quiet
        # one always has a token, so a change is applied without waiting (burst 2).
        bucket = TokenBucket(0.1)
        while True:
            pause = bucket.take()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                stored = await self.store.wait_change(index)
            except StoreUnavailable as exc:
                sink.drain_error(self.store.origin, str(exc))
                index = 0
                await asyncio.sleep(self._backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            index = stored.index
            sink.drain_error(self.store.origin, "; ".join(stored.problems) or None)
            if stored.drains != reported:
                reported = stored.drains
                sink.drain_records(self.store.origin, stored.drains)
