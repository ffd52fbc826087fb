"""Config and instances from Consul: one KV key, and the health of every watched service.

:class:`ConsulConfig` watches one key (``GET /v1/kv/KEY``); :class:`ConsulCatalog` watches
``GET /v1/health/service/NAME`` for every service named by the config. Both are thin
adapters around py-consul's asyncio client and follow Consul's blocking-query rules
(https://developer.hashicorp.com/consul/api-docs/features/blocking):

* the first read of a resource has no ``index`` and answers at once; each later read passes
  the last ``X-Consul-Index`` and a ``wait``, and Consul holds it until the data changes or
  the wait (plus up to wait/16 of jitter) runs out;
* an index lower than the one held resets the loop to 0 (e.g. a raft snapshot restore);
* an index of 0 is used as 1, otherwise every read would return at once (a busy loop);
* the loop is rate limited with a token bucket of burst 2 (:class:`TokenBucket`), so it
  proceeds without waiting in the happy case and degrades to polling when data churns;
* a read that returns is no guarantee of a change: the sources report only when what they
  report (the text, the instance list) differs from what they reported last.

When Consul is unreachable or answers an error, the sources report ``source_error`` with a
message naming the address, keep what they reported last (never an empty instance list
because Consul is down), retry with full-jitter exponential backoff (:class:`Backoff`) and
report ``source_ok`` once Consul answers again.

Both constructors take ``address`` (``HOST:PORT``, optionally ``http://`` or ``https://``
first), ``token`` (an ACL token; it wins over ``CONSUL_HTTP_TOKEN``), ``scheme``, ``verify``
(TLS verification, or a CA bundle path), ``wait`` (the blocking wait, a Go duration such as
``"30s"`` or seconds) and ``timing`` (:class:`WatchTiming`: rate limit, backoff, slack). The
py-consul client, and its aiohttp session, is made inside ``run()`` and closed when ``run()``
ends (it is cancelled).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

import consul
import consul.aio

from junction.catalog.consul_client import (
    MAX_WAIT,
    TRANSIENT_ERRORS,
    Backoff,
    BadResponse,
    ConsulEndpoint,
    ConsulSettingError,
    TokenBucket,
    WatchTiming,
    next_index,
    parse_duration,
    parse_index,
    watch_timing,
)
from junction.catalog.model import Instance, health_from_checks
from junction.catalog.source import CatalogSource, ConfigSource, SourceSink

# The client pieces live in junction.catalog.consul_client; re-exported here, where the
# sources that use them are.
__all__ = [
    "MAX_WAIT",
    "TRANSIENT_ERRORS",
    "Backoff",
    "ConsulCatalog",
    "ConsulConfig",
    "ConsulEndpoint",
    "ConsulSettingError",
    "TokenBucket",
    "WatchTiming",
    "instances_from_entries",
    "next_index",
    "parse_duration",
    "parse_index",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Envoy's ``load_balancing_weight`` must be >= 1; the file catalog allows up to 128.
MAX_WEIGHT = 128


async def _poll(
    endpoint: ConsulEndpoint,
    fetch: Callable[[int], Awaitable[tuple[int, T]]],
    on_data: Callable[[T], None],
    on_error: Callable[[str], None],
) -> NoReturn:
    """One blocking-query loop: ``fetch(index)`` reads, ``on_data`` gets every answer."""
    timing = endpoint.timing
    bucket = TokenBucket(timing.rate_interval)
    index = 0
    failures = 0
    while True:
        pause = bucket.take()
        if pause > 0:
            await asyncio.sleep(pause)
        try:
            returned, data = await fetch(index)
        except TRANSIENT_ERRORS as exc:
            message = endpoint.describe(exc)
            log.debug("%s", message)
            on_error(message)
            # Re-read without blocking once Consul answers again: a blocking read on the
            # old index would hold until the next change, delaying source_ok by a whole wait.
            index = 0
            await asyncio.sleep(timing.backoff.delay(failures))
            failures += 1
            continue
        failures = 0
        index = next_index(index, returned)
        on_data(data)


class ConsulConfig(ConfigSource):
    """The config document in one Consul KV key; ``origin`` is ``consul:KEY``.

    Reports the text at once and whenever it changes (an idempotent write, a new
    ModifyIndex with the same bytes, is not reported). A missing key or a value that is not
    UTF-8 is a ``source_error``; the watch carries on and reports the text once it is fixed.
    """

    def __init__(
        self,
        address: str,
        key: str,
        *,
        token: str | None = None,
        scheme: str = "http",
        verify: bool | str = True,
        wait: str | float | None = None,
        timing: WatchTiming | None = None,
    ) -> None:
        if not key or key.startswith("/"):
            raise ConsulSettingError(f"consul key {key!r} must be non-empty, without a leading /")
        self.key = key
        self.origin = f"consul:{key}"
        self._endpoint = ConsulEndpoint(address, token, scheme, verify, watch_timing(timing, wait))

    async def run(self, sink: SourceSink) -> None:
        endpoint = self._endpoint
        client = endpoint.client()
        reported: str | None = None
        problem: str | None = None

        async def fetch(index: int) -> tuple[int, Any]:
            raw_index, entry = await client.kv.get(
                self.key, index=index or None, wait=endpoint.timing.wait_param
            )
            return parse_index(raw_index), entry

        def on_error(message: str) -> None:
            nonlocal problem
            if message != problem:
                problem = message
                sink.source_error(self.origin, message)

        def on_data(entry: Mapping[str, Any] | None) -> None:
            nonlocal problem, reported
            if entry is None:
                on_error(f"consul key {self.key} does not exist")
                return
            value = entry.get("Value") or b""  # null: a key written with an empty body
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as exc:
                on_error(
                    f"consul key {self.key} is not UTF-8 text (byte {exc.start}: {exc.reason})"
                )
                return
            if problem is not None:
                problem = None
                sink.source_ok(self.origin)
            if text != reported:
                reported = text
                sink.config_text(self.origin, text)

        try:
            await _poll(endpoint, fetch, on_data, on_error)
        except Exception as exc:
            # A bug, not a Consul problem (those are retried): say so, as the catalog does.
            log.error("consul config loop died", exc_info=exc)
            sink.source_error(self.origin, f"internal error: {exc!r}")
            raise
        finally:
            await client.close()


def instances_from_entries(
    entries: Iterable[Mapping[str, Any]],
) -> tuple[tuple[Instance, ...], list[str]]:
    """Map ``/v1/health/service/NAME`` entries to sorted instances, plus what was skipped.

    * address: ``Service.Address``, or ``Node.Address`` when empty (as Consul documents);
      it must be an IP literal, since Envoy rejects EDS endpoints given by hostname;
    * port: ``Service.Port`` (0 when the service registered none: the config's
      ``endpoint.eds.*.port`` is then needed);
    * zone/region: ``Service.Meta`` first, then ``Node.Meta`` (keys ``zone``, ``region``).
      Service meta wins because node meta describes every service on the node and is set by
      whoever runs the node, while service meta is set for this instance by whoever
      registers it: the more specific statement is the one to believe;
    * health: every check of the entry (node checks such as serfHealth and node/service
      maintenance included) through :func:`health_from_checks`;
    * weight: ``Service.Weights.Passing`` (Consul's default 1), clamped to 1..128;
    * id: ``Service.ID`` (what ``junction drain`` may name the instance by).
    """
    instances: list[Instance] = []
    skipped: list[str] = []
    for entry in entries:
        try:
            node = entry.get("Node") or {}
            service = entry["Service"]
            address = service.get("Address") or node.get("Address") or ""
            node_meta = node.get("Meta") or {}
            service_meta = service.get("Meta") or {}
            weights = service.get("Weights") or {}
            checks = [(c["CheckID"], c["Status"]) for c in entry.get("Checks") or ()]
            instance = Instance(
                address=address,
                port=int(service.get("Port") or 0),
                zone=str(service_meta.get("zone") or node_meta.get("zone") or ""),
                region=str(service_meta.get("region") or node_meta.get("region") or ""),
                health=health_from_checks(checks),
                weight=min(MAX_WEIGHT, max(1, int(weights.get("Passing") or 1))),
                node=str(node.get("Node") or ""),
                tags=tuple(str(t) for t in service.get("Tags") or ()),
                id=str(service.get("ID") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadResponse(f"health entry without the expected fields: {exc!r}") from None
        try:
            ipaddress.ip_address(address)
        except ValueError:
            skipped.append(
                f"instance {service.get('ID')!r} on node {instance.node!r} has address "
                f"{address!r}, not an IP address; skipped"
            )
            continue
        instances.append(instance)
    instances.sort(key=lambda i: (i.sort_key(), i.node, i.tags, i.health.value, i.weight))
    return tuple(instances), skipped


class ConsulCatalog(CatalogSource):
    """Instances of the watched services from Consul's health API; ``origin`` is
    ``consul-catalog:ADDRESS``.

    One blocking loop per service, started and stopped by :meth:`watch`. All instances are
    read (not only passing ones) because health becomes Envoy's HealthStatus. Problems of
    all loops are summed up into one ``source_error`` for the origin (identical messages,
    e.g. "unreachable" from every loop, appear once); ``source_ok`` follows when no loop has
    a problem left.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        scheme: str = "http",
        verify: bool | str = True,
        wait: str | float | None = None,
        timing: WatchTiming | None = None,
    ) -> None:
        self.origin = f"consul-catalog:{address}"
        self._endpoint = ConsulEndpoint(address, token, scheme, verify, watch_timing(timing, wait))
        self._wanted: frozenset[str] = frozenset()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._client: consul.aio.Consul | None = None
        self._sink: SourceSink | None = None
        self._problems: dict[str, str] = {}
        self._summary = ""

    def watch(self, services: frozenset[str]) -> None:
        """Start loops for new names and cancel those of dropped names (call it from the
        event loop that runs :meth:`run`; before ``run`` it only records the names)."""
        self._wanted = frozenset(services)
        if self._client is not None:
            self._sync_tasks()

    async def run(self, sink: SourceSink) -> None:
        if self._client is not None:
            raise RuntimeError("ConsulCatalog.run is already running")
        self._sink = sink
        self._client = self._endpoint.client()
        try:
            self._sync_tasks()
            await asyncio.Event().wait()  # the loops do the work, until we are cancelled
        finally:
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client, self._client, self._sink = self._client, None, None
            self._problems.clear()
            self._summary = ""
            await client.close()

    def _sync_tasks(self) -> None:
        for name in sorted(self._tasks.keys() - self._wanted):
            self._tasks.pop(name).cancel()
            self._set_problem(name, None)
        loop = asyncio.get_running_loop()
        for name in sorted(self._wanted - self._tasks.keys()):
            task = loop.create_task(self._watch_service(name), name=f"consul-catalog:{name}")
            task.add_done_callback(self._task_done)
            self._tasks[name] = task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a Consul problem (those are retried); say so rather than go quiet.
            log.error("consul catalog loop died", exc_info=task.exception())
            if self._sink is not None:
                self._sink.source_error(self.origin, f"internal error: {task.exception()!r}")

    def _set_problem(self, service: str, message: str | None) -> None:
        if message is None:
            self._problems.pop(service, None)
        else:
            self._problems[service] = message
        summary = "; ".join(sorted(set(self._problems.values())))
        if summary == self._summary or self._sink is None:
            return
        self._summary = summary
        if summary:
            self._sink.source_error(self.origin, summary)
        else:
            self._sink.source_ok(self.origin)

    async def _watch_service(self, name: str) -> None:
        client, sink, endpoint = self._client, self._sink, self._endpoint
        assert client is not None and sink is not None
        reported: tuple[Instance, ...] | None = None

        async def fetch(index: int) -> tuple[int, tuple[tuple[Instance, ...], list[str]]]:
            raw_index, entries = await client.health.service(
                name, index=index or None, wait=endpoint.timing.wait_param
            )
            return parse_index(raw_index), instances_from_entries(entries or ())

        def on_data(result: tuple[tuple[Instance, ...], list[str]]) -> None:
            nonlocal reported
            instances, skipped = result
            self._set_problem(name, f"service {name}: " + "; ".join(skipped) if skipped else None)
            if instances != reported:
                reported = instances
                sink.instances(name, instances)

        def on_error(message: str) -> None:
            self._set_problem(name, message)

        await _poll(endpoint, fetch, on_data, on_error)
