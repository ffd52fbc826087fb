"""``junction maintenance-agent``: follow GCE's maintenance events, drain while they last.

Runs on the instance it drains. It long-polls the metadata server as Google documents
("Query the metadata server for maintenance event notices", "View and query VM metadata:
wait for change"):

- ``GET {metadata-url}/computeMetadata/v1/instance/maintenance-event`` with the header
  ``Metadata-Flavor: Google`` (the server refuses requests without it);
- first without waiting, to learn the current value and its ``ETag`` response header;
  then with ``wait_for_change=true&last_etag=ETAG``: the server answers at once if the
  value's ETag is no longer ``ETAG``, otherwise holds the request until it changes or
  ``timeout_sec`` runs out (then it answers the unchanged value);
- errors (connection refused, timeouts, 5xx such as the 503 the server may answer while
  it is busy) are retried with jittered exponential backoff, and never change what the
  agent wants (:mod:`junction.drain.maintenance`).

Decisions and their results go to the log: the value and why, the command, what the
control plane said. Drains go through the control plane's API (``POST``/``DELETE
/drain/SERVICE/INSTANCE``), with ``Authorization: Bearer $JUNCTION_ADMIN_TOKEN`` when set.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import dataclass, field

import aiohttp

from junction.admin import auth_headers
from junction.catalog.consul import Backoff
from junction.drain.client import drain_url
from junction.drain.maintenance import (
    AGENT,
    Action,
    AgentState,
    after_result,
    next_action,
    observe,
)
from junction.drain.model import DrainError

__all__ = ["AgentSettings", "MaintenanceAgent", "run_agent"]

log = logging.getLogger("junction.maintenance")

PATH = "/computeMetadata/v1/instance/maintenance-event"


class MetadataError(DrainError):
    """The metadata server could not be read (the message says how)."""


@dataclass(frozen=True)
class AgentSettings:
    service: str
    instance: str
    http: str
    metadata_url: str = "http://metadata.google.internal"
    force: bool = False
    #: The metadata server's ``timeout_sec`` for a wait (it answers the unchanged value).
    wait: float = 300.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))


class MaintenanceAgent:
    """One agent; :meth:`run` until cancelled."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.state = AgentState()
        self._etag: str | None = None
        self._failures = 0
        base = settings.metadata_url.rstrip("/")
        self._url = base + PATH
        self._drain_url = drain_url(settings.http, settings.service, settings.instance)
        self._auth = auth_headers()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            await self._adopt_own_drain(session)
            while True:
                # While a command is pending, come back soon even if nothing changes.
                wait = self._delay() if self.state.pending else self.settings.wait
                try:
                    value = await self.read(session, wait)
                except MetadataError as exc:
                    delay = self._delay()
                    self._failures += 1
                    log.warning("metadata server: %s; keeping the instance as it is, "
                                "retrying in %.1fs", exc, delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    continue
                before = self.state.value
                self.state = observe(self.state, value)
                if self.state.value != before:
                    log.info("maintenance-event is %s (was %s)", self.state.value, before)
                await self.reconcile(session)

    def _delay(self) -> float:
        return max(0.05, self.settings.backoff.delay(self._failures))

    async def read(self, session: aiohttp.ClientSession, wait: float) -> str:
        """One read: at once the first time (or after an error), then a wait for change."""
        params = {}
        if self._etag is not None:
            params = {
                "wait_for_change": "true",
                "last_etag": self._etag,
                "timeout_sec": str(max(1, round(wait))),
            }
        timeout = aiohttp.ClientTimeout(total=max(1, round(wait)) + 30)
        try:
            async with session.get(
                self._url, params=params, headers={"Metadata-Flavor": "Google"}, timeout=timeout
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise MetadataError(f"{self._url} answered {resp.status}: {text.strip()[:200]}")
                etag = resp.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._etag = None  # re-read at once when it answers again
            raise MetadataError(f"{self._url}: {exc or type(exc).__name__}") from None
        if not etag:
            raise MetadataError(f"{self._url} answered without an ETag header")
        self._etag = etag
        self._failures = 0
        return text

    async def reconcile(self, session: aiohttp.ClientSession) -> None:
        action = next_action(self.state)
        if action is None:
            return
        ok = await self._command(session, action)
        self.state = after_result(self.state, action, ok)

    async def _command(self, session: aiohttp.ClientSession, action: Action) -> bool:
        s = self.settings
        what = f"{s.service} {s.instance}"
        try:
            if action is Action.DRAIN:
                body = {
                    "reason": f"GCE maintenance-event {self.state.value}",
                    "by": AGENT,
                    "force": s.force,
                }
                log.info("draining %s: maintenance-event is %s", what, self.state.value)
                request = session.post(self._drain_url, json=body, headers=self._auth)
            else:
                log.info("undraining %s: maintenance-event is back to NONE", what)
                request = session.delete(self._drain_url, headers=self._auth)
            async with request as resp:
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("control plane at %s: %s; will retry", s.http, exc)
            return False
        if resp.status == 200:
            detail = answer.get("effect", "") if isinstance(answer, dict) else ""
            log.info("%s %s: done%s", action.value, what, f" ({detail})" if detail else "")
            return True
        if action is Action.UNDRAIN and resp.status == 404:
            log.info("undrain %s: it was not drained (someone undid it already)", what)
            return True
        error = answer.get("error") if isinstance(answer, dict) else answer
        log.warning("%s %s refused (%s): %s; will retry", action.value, what, resp.status, error)
        return False

    async def _adopt_own_drain(self, session: aiohttp.ClientSession) -> None:
        """A previous run's drain (by the agent) is ours to undo; an operator's is not."""
        s = self.settings
        try:
            async with session.get(f"http://{s.http}/drain", headers=self._auth) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("control plane at %s: %s (cannot see existing drains)", s.http, exc)
            return
        for d in (body or {}).get("drains", []) if isinstance(body, dict) else []:
            if (d.get("service"), d.get("instance"), d.get("by")) == (s.service, s.instance, AGENT):
                log.info("found this agent's drain of %s %s from before", s.service, s.instance)
                self.state = AgentState(drained=True)


def run_agent(args: argparse.Namespace) -> int:
    settings = AgentSettings(
        service=args.service,
        instance=args.instance,
        http=args.http,
        metadata_url=args.metadata_url,
        force=args.force,
    )

    async def main() -> int:
        task = asyncio.create_task(MaintenanceAgent(settings).run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        log.info("following %s%s for %s %s via %s", settings.metadata_url, PATH,
                 settings.service, settings.instance, settings.http)  # fmt: skip
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopped (drains stay as they are)")
        return 0

    return asyncio.run(main())
