"""From sources to snapshots: last good config, coalesced rebuilds, nothing lost on bad input.

The publisher is the :class:`~junction.catalog.source.SourceSink` every source reports to.
It validates config text, keeps the last good :class:`Config`, follows the catalog, and
rebuilds the snapshot when either changes, then hands it to the snapshot cache:

- a bad document is rejected with its path-named problems (logged, shown in /status); the
  last good config keeps serving and nothing is pushed;
- changes are coalesced: a rebuild waits ``settle`` seconds for more changes, and two
  publishes are at least ``min_interval`` apart, so an instance flapping fast costs a few
  pushes a second, not one per flap;
- a cluster the config adds is published only once the catalog has reported its instances
  (or ``catalog_grace`` passed), so a new route does not send its share to an empty cluster;
- a snapshot that fails :func:`check_snapshot` is not published (same as a bad document);
- canary states (:mod:`junction.canary`, reported by a ``CanaryStateSource``) are one more
  input: :func:`~junction.canary.apply.apply_canary` sets the route weights of each ramped
  service's (baseline, candidate) pair before translation, so a new state reaches Envoy
  with the next publish (within ``settle`` + ``min_interval``).

"Last good config, with the canary applied" is a
:class:`~junction.canary.desired.DesiredState`, the same reducer the decision service
reads, so Envoy's route weights and the sticky canary buckets cannot disagree.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from junction.canary.desired import DesiredState
from junction.canary.state import CanaryState
from junction.catalog.model import Catalog, Instance
from junction.catalog.source import CatalogSource
from junction.config.model import Config
from junction.xds.incremental import IncrementalTranslator
from junction.xds.resources import Snapshot
from junction.xds.translate import DEFAULT_OPTIONS, TranslateOptions
from junction.xds.validate import check_snapshot

__all__ = ["PublishTiming", "Publisher", "SnapshotSink"]

log = logging.getLogger("junction.xds")


class SnapshotSink(Protocol):
    """Where snapshots go (the xDS snapshot cache)."""

    def set(self, snapshot: Snapshot) -> None: ...


@dataclass
class _SourceState:
    ok: bool = True
    error: str | None = None
    since: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class PublishTiming:
    """One :meth:`Publisher.publish_now`: its wall and CPU (this thread's) seconds, when it
    ended (``time.perf_counter()``), and what it returned."""

    wall: float
    cpu: float
    ended_at: float
    snapshot: Snapshot | None


class Publisher:
    """Implements ``SourceSink``; run :meth:`run` as a task for the publisher's lifetime.

    ``on_publish``, when given, is told the :class:`PublishTiming` of every publish step
    (for benchmarks; without it nothing is timed).
    """

    def __init__(
        self,
        cache: SnapshotSink,
        catalog_source: CatalogSource | None = None,
        *,
        options: TranslateOptions | None = None,
        settle: float = 0.02,
        min_interval: float = 0.1,
        catalog_grace: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_publish: Callable[[PublishTiming], None] | None = None,
    ) -> None:
        self._cache = cache
        self._on_publish = on_publish
        self._catalog_source = catalog_source
        self._translator = IncrementalTranslator(options or DEFAULT_OPTIONS)
        self._settle = settle
        self._min_interval = min_interval
        self._catalog_grace = catalog_grace
        self._clock = clock

        #: The last good config, with the canary applied (shared with the decision service).
        self._desired = DesiredState()
        self._catalog = Catalog()
        self._reported: set[str] = set()  # services the catalog has reported at least once
        self._sources: dict[str, _SourceState] = {}
        self._dirty = asyncio.Event()
        self._waiting_since: float | None = None
        self._published: Snapshot | None = None
        self._published_at = 0.0
        self.publishes = 0  # for tests and /status: how many snapshots were handed on
        # Monotonic counts for /status and /metrics, by origin.
        self._accepted_by: collections.Counter[str] = collections.Counter()
        self._rejected_by: collections.Counter[str] = collections.Counter()
        self._errors_by: collections.Counter[str] = collections.Counter()

    # ---- SourceSink -----------------------------------------------------------------

    def config_text(self, origin: str, text: str) -> None:
        offer = self._desired.offer(origin, text)
        if offer.outcome == "rejected":
            self._rejected(origin, offer.message)
            return
        self.source_ok(origin)
        if offer.outcome == "accepted":
            self._accepted(origin, offer.version)

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        new = tuple(instances)
        first = service not in self._reported
        self._reported.add(service)
        if first or self._catalog.instances(service) != tuple(sorted(new)):
            self._catalog = self._catalog.replace(service, new)
            self._dirty.set()

    def source_error(self, origin: str, message: str) -> None:
        self._errors_by[origin] += 1
        state = self._sources.get(origin)
        if state is None or state.ok or state.error != message:
            log.warning("source %s: %s (serving the last good state)", origin, message)
            self._sources[origin] = _SourceState(ok=False, error=message)

    def source_ok(self, origin: str) -> None:
        state = self._sources.get(origin)
        if state is None or not state.ok:
            if state is not None:
                log.info("source %s: recovered", origin)
            self._sources[origin] = _SourceState(ok=True)

    # ---- CanaryStateSink --------------------------------------------------------------

    def canary_states(self, origin: str, states: Mapping[str, CanaryState]) -> None:
        """The stored canary states (complete); route weights follow them."""
        self._desired.set_canary(states)
        self._dirty.set()

    # ---- config ---------------------------------------------------------------------

    def _rejected(self, origin: str, message: str) -> None:
        log.error("config rejected, the last good config keeps serving:\n%s", message)
        self._rejected_by[origin] += 1
        self.source_error(origin, "config rejected (see config.last_error)")

    def _accepted(self, origin: str, version: str) -> None:
        config = self._desired.config
        assert config is not None
        log.info("config %s accepted from %s", version, origin)
        self._accepted_by[origin] += 1
        if self._catalog_source is not None:
            self._catalog_source.watch(frozenset(config.cluster_names()))
        self._waiting_since = None
        self._dirty.set()

    # ---- building -------------------------------------------------------------------

    def build(self) -> Snapshot | None:
        """Translate the current state; None (and the error recorded) if it is not publishable."""
        good, desired = self._desired.good, self._desired.desired()
        if good is None or desired is None:
            return None
        snapshot = self._translator.translate(
            desired, self._catalog, origin=good.origin, config_version=good.version
        )
        problems = check_snapshot(snapshot)
        if problems:
            message = "\n".join(f"{good.origin}: {p}" for p in problems)
            self._desired.reject(good.origin, good.version, message)
            self._rejected(good.origin, message)
            return None
        return snapshot

    def _missing_services(self) -> set[str]:
        config = self._desired.config
        if config is None or self._catalog_source is None:
            return set()
        return set(config.cluster_names()) - self._reported

    async def run(self) -> None:
        """Rebuild and publish on every change, coalesced, until cancelled."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._settle)
            wait = self._published_at + self._min_interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            missing = self._missing_services()
            if missing:
                now = self._clock()
                if self._waiting_since is None:
                    self._waiting_since = now
                if now - self._waiting_since < self._catalog_grace:
                    await asyncio.sleep(min(0.05, self._catalog_grace))
                    continue  # still dirty: look again shortly
                log.warning(
                    "no instances reported yet for %s after %.1fs; publishing without them",
                    ", ".join(sorted(missing)),
                    self._catalog_grace,
                )
            self._dirty.clear()
            self._waiting_since = None
            self.publish_now()

    def publish_now(self) -> Snapshot | None:
        """Build and hand on a snapshot if it differs from the last one published."""
        if self._on_publish is None:
            return self._publish()
        wall, cpu = time.perf_counter(), time.thread_time()
        snapshot = self._publish()
        end = time.perf_counter()
        self._on_publish(PublishTiming(end - wall, time.thread_time() - cpu, end, snapshot))
        return snapshot

    def _publish(self) -> Snapshot | None:
        snapshot = self.build()
        if snapshot is None:
            return None
        if self._published is not None and self._published.version == snapshot.version:
            return self._published
        self._cache.set(snapshot)
        self._published = snapshot
        self._published_at = self._clock()
        self.publishes += 1
        log.info(
            "published snapshot %s (config %s: %s)",
            snapshot.version,
            snapshot.config_version,
            ", ".join(f"{n} {t}" for t, n in snapshot.counts().items()),
        )
        return snapshot

    # ---- status ---------------------------------------------------------------------

    @property
    def config(self) -> Config | None:
        return self._desired.config

    @property
    def snapshot(self) -> Snapshot | None:
        return self._published

    def status(self) -> dict[str, Any]:
        """Plain data for ``GET /status``."""
        good = self._desired.good
        snap = self._published
        return {
            "config": {
                "origin": good.origin if good else None,
                "version": good.version if good else None,
                "accepted_at": good.accepted_at if good else None,
                "last_error": self._desired.error,
                "accepted": dict(self._accepted_by),
                "rejected": dict(self._rejected_by),
            },
            "snapshot": {
                "version": snap.version if snap else None,
                "config_version": snap.config_version if snap else None,
                "resources": snap.counts() if snap else {},
                "publishes": self.publishes,
            },
            "sources": {
                origin: {
                    "ok": s.ok,
                    "error": s.error,
                    "since": s.since,
                    "errors": self._errors_by[origin],
                }
                for origin, s in sorted(self._sources.items())
            },
            "instances": {
                name: {
                    "total": len(insts),
                    "by_health": _count_health(insts),
                }
                for name, insts in self._catalog.services.items()
            },
        }


def _count_health(instances: Iterable[Instance]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for inst in instances:
        counts[inst.health.value] = counts.get(inst.health.value, 0) + 1
    return counts
