"""What every scenario shares, on top of Locust: common options, the loopback guard, pacing,
bounds in time and requests, the per-second timeline, the checks, and the files the runner
reads.

A locustfile makes one :class:`Scenario` at import time (Locust's event hooks must be
registered then), adds its options with :meth:`Scenario.options`, its verdicts with
:meth:`Scenario.check`, and its users subclass :class:`ScenarioUser`, whose
:meth:`~ScenarioUser.fetch` sends one request and lets the task judge the answer (a wrong
answer is a Locust failure: ``answer.fail("why")``, counted and shown like a 500).

Common options (besides Locust's own ``--host``, ``-u``, ``--run-time``...)::

    --host-header NAME      the Host of every request (default example.com, the seed's domain)
    --rate R                target requests/s over all users (0: as fast as they go)
    --max-requests N        stop after N requests, whatever --run-time says
    --max-failure-rate F    failures allowed, as a share of requests (default 0)
    --share-z Z             width of share checks in standard errors (default 4)
    --results-dir DIR       write progress.json (each second) and scenario.json (at the end)
    --allow-remote          allow a target that is not loopback (a real deployment)

Exit code: 0 when every check holds, 1 when one fails, 2 when the run could not start.
Single process only (no ``--processes``/``--master``): the checks need every answer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from _checks import Check, LoadTestError, Shares, Timeline, require_loopback
from locust import events
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopUser
from locust.runners import LocalRunner

__all__ = ["Answer", "Scenario", "ScenarioUser"]

log = logging.getLogger("loadtest")

#: Without ``--run-time`` a run still ends: Locust alone would run until Ctrl-C.
DEFAULT_MAX_SECONDS = 300
#: Headers the demo upstreams (examples/upstream.py) answer with: who served, and the
#: decision Envoy's decision service made, echoed back.
SERVED_BY = "x-upstream-service"
DECISION_ECHO = "x-echo-x-junction-decision"


#: Set when a scenario could not set itself up: users then stop before sending anything.
_ABORTED = gevent.event.Event()


class Answer:
    """One response as a scenario sees it: status, who served it, the decision tag."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.status: int = int(getattr(response, "status_code", 0) or 0)
        headers = getattr(response, "headers", None) or {}
        self.cluster: str | None = headers.get(SERVED_BY)
        self.decision: str | None = headers.get(DECISION_ECHO)
        self.failed_because: str | None = None

    def fail(self, why: str) -> None:
        """Mark the request failed in Locust (its failures table names ``why``)."""
        self.failed_because = why
        self._response.failure(why)

    def label(self, value: str) -> None:
        """Count this request under ``value`` (not its cluster) in its group's shares."""
        self._response.request_meta["context"]["label"] = value


class Scenario:
    """One locustfile's run. ``name`` names it in results; ``failure_budget`` adds the
    common check that failures stay within ``--max-failure-rate`` (the canary scenario,
    which provokes failures, judges them itself)."""

    def __init__(self, name: str, *, failure_budget: bool = True) -> None:
        self.name = name
        self.failure_budget = failure_budget
        self.env: Any = None
        self.timeline: Timeline | None = None
        self.shares: dict[str, Shares] = {}
        self.extra: dict[str, Any] = {}
        #: Figures added to every progress.json (e.g. the canary's current weight).
        self.live: dict[str, Any] = {}
        self._checks: list[Callable[[], Iterable[Check]]] = []
        self._options: list[Callable[[Any], None]] = []
        self._starts: list[Callable[[], None]] = []
        self._stops: list[Callable[[], None]] = []
        self._requests = 0
        self._last_end = 0.0
        self._stopped_by = "run-time"
        self._quitting = False
        self._aborted: str | None = None
        self._flusher: gevent.Greenlet | None = None
        events.init_command_line_parser.add_listener(self._add_options)
        events.init.add_listener(self._on_init)
        events.test_start.add_listener(self._on_test_start)
        events.test_stop.add_listener(self._on_test_stop)
        events.request.add_listener(self._on_request)
        events.quitting.add_listener(self._on_quitting)

    # ---- what a locustfile declares --------------------------------------------------

    def options(self, add: Callable[[Any], None]) -> Callable[[Any], None]:
        """Decorator: ``add(parser)`` adds the scenario's own options."""
        self._options.append(add)
        return add

    def check(self, fn: Callable[[], Iterable[Check]]) -> Callable[[], Iterable[Check]]:
        """Decorator: ``fn()`` yields verdicts at the end of the run."""
        self._checks.append(fn)
        return fn

    def on_start(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Decorator: ``fn()`` runs when the test starts (before any user)."""
        self._starts.append(fn)
        return fn

    def on_stop(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Decorator: ``fn()`` runs when the users have stopped (undo what on_start did)."""
        self._stops.append(fn)
        return fn

    @property
    def opts(self) -> Any:
        return self.env.parsed_options

    def guard(self, target: str, what: str) -> None:
        """The loopback guard for any URL a scenario talks to besides ``--host``."""
        require_loopback(target, allow_remote=self.opts.allow_remote, what=what)

    # ---- Locust hooks -----------------------------------------------------------------

    def _add_options(self, parser: Any) -> None:
        g = parser.add_argument_group(f"scenario {self.name}")
        g.add_argument("--host-header", default="example.com", help="Host header to send")
        g.add_argument(
            "--rate", type=float, default=0.0, help="target requests/s over all users (0: unpaced)"
        )
        g.add_argument(
            "--max-requests", type=int, default=1_000_000, help="stop after this many requests"
        )
        g.add_argument(
            "--max-failure-rate",
            type=float,
            default=0.0,
            help="failures allowed, as a share of requests",
        )
        g.add_argument(
            "--share-z", type=float, default=4.0, help="share checks: tolerance in standard errors"
        )
        g.add_argument("--results-dir", default="", help="write progress.json, scenario.json")
        g.add_argument(
            "--allow-remote",
            action="store_true",
            default=False,
            help="allow a target that is not loopback",
        )
        for add in self._options:
            add(g)

    def _on_init(self, environment: Any, **_: Any) -> None:
        self.env = environment
        try:
            if environment.runner is not None and not isinstance(environment.runner, LocalRunner):
                raise LoadTestError(
                    f"scenario {self.name} runs in one process (no --processes/--master/"
                    "--worker): its checks need every answer"
                )
            if not environment.host:
                raise LoadTestError("give --host, e.g. http://127.0.0.1:8000")
            require_loopback(environment.host, allow_remote=self.opts.allow_remote, what="--host")
            if self.opts.max_requests < 1 or self.opts.rate < 0:
                raise LoadTestError("--max-requests must be at least 1 and --rate at least 0")
        except LoadTestError as exc:
            print(f"loadtest {self.name}: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    def _on_test_start(self, environment: Any, **_: Any) -> None:
        self.timeline = Timeline(time.time())
        seconds = self.opts.run_time or DEFAULT_MAX_SECONDS
        if not self.opts.run_time:
            log.warning("no --run-time: this run stops after %d s", DEFAULT_MAX_SECONDS)
            gevent.spawn_later(seconds, self._quit, "time")
        try:
            for fn in self._starts:
                fn()
        except (LoadTestError, OSError) as exc:
            # Locust logs and swallows a listener's exception; a scenario that cannot set
            # itself up must not run as if it had.
            self._aborted = str(exc)
            _ABORTED.set()
            print(f"loadtest {self.name}: {exc}", file=sys.stderr, flush=True)
            gevent.spawn(self._quit, "setup failed")
            return
        if self.opts.results_dir:
            self._flusher = gevent.spawn(self._flush_progress)

    def _on_test_stop(self, environment: Any, **_: Any) -> None:
        for fn in self._stops:
            try:
                fn()
            except Exception:  # an undo that fails must not hide the results
                log.exception("scenario %s: stopping", self.name)

    def _on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        response: Any = None,
        context: dict[str, Any] | None = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        if self.timeline is None:
            return
        headers = getattr(response, "headers", None) or {}
        context = context or {}
        self.timeline.record(
            start_time if start_time is not None else time.time(),
            response_time or 0.0,
            exception is not None,
            headers.get(SERVED_BY),
            context.get("group"),
            context.get("label"),
        )
        self._requests += 1
        if start_time is not None:
            self._last_end = max(self._last_end, start_time + (response_time or 0.0) / 1000)
        if self._requests == self.opts.max_requests:
            gevent.spawn(self._quit, "max-requests")

    def _quit(self, why: str) -> None:
        self._stopped_by = why
        log.warning("scenario %s: stopping (%s)", self.name, why)
        self.env.runner.quit()

    def _flush_progress(self) -> None:
        path = Path(self.opts.results_dir) / "progress.json"
        while True:
            gevent.sleep(1.0)
            if self.timeline is not None:
                _write_json(path, self._progress())

    def _progress(self) -> dict[str, Any]:
        assert self.timeline is not None
        now = time.time() - self.timeline.t0
        whole = int(now) - 1  # the last second that is over
        last = self.timeline.row(whole) if whole >= 0 else None
        totals = self.timeline.totals()
        return {
            "elapsed": round(now, 1),
            "requests": totals["requests"],
            "failures": totals["failures"],
            "rps": last["requests"] if last else 0,
            "p95_ms": last["latency_ms"]["p95"] if last else None,
            "groups": totals["groups"],
            **self.live,
        }

    def _on_quitting(self, environment: Any, **_: Any) -> None:
        if self._quitting or self.timeline is None:
            return
        self._quitting = True
        if self._flusher is not None:
            self._flusher.kill(block=False)
        if getattr(self.opts, "csv_prefix", None):
            # Locust rewrites its CSV files once a second and closes them at exit without a
            # last write: wait for one more round so they hold the final figures.
            gevent.sleep(1.2)
        checks: list[Check] = []
        if self._aborted is not None:
            checks.append(Check("the scenario started", False, self._aborted))
            self._checks.clear()
        for fn in self._checks:
            try:
                checks.extend(fn())
            except Exception as exc:  # a check that crashes is a failed check, not a pass
                log.exception("scenario %s: check %s", self.name, fn.__name__)
                checks.append(Check(fn.__name__, False, f"the check crashed: {exc!r}"))
        stats = environment.stats.total
        if self.failure_budget:
            allowed = int(self.opts.max_failure_rate * stats.num_requests)
            checks.append(
                Check(
                    "failures within budget",
                    stats.num_failures <= allowed,
                    f"{stats.num_failures} of {stats.num_requests} requests failed "
                    f"(allowed {allowed}: --max-failure-rate {self.opts.max_failure_rate})",
                )
            )
        ok = all(c.ok for c in checks) and bool(checks)
        for c in checks:
            print(
                f"loadtest {self.name}: {'PASS' if c.ok else 'FAIL'} {c.name}: {c.detail}",
                file=sys.stderr,
            )
        if self.opts.results_dir:
            _write_json(Path(self.opts.results_dir) / "scenario.json", self._result(checks, ok))
        exceptions = len(getattr(environment.runner, "exceptions", {}) or {})
        code = 0 if ok and not exceptions else 1
        environment.process_exit_code = 2 if self._aborted is not None else code

    def _result(self, checks: list[Check], ok: bool) -> dict[str, Any]:
        assert self.timeline is not None
        o = self.opts
        stats = self.env.stats.total
        return {
            "scenario": self.name,
            "ok": ok,
            "t0": self.timeline.t0,
            "ended": time.time(),
            "stopped_by": self._stopped_by,
            # From the test's start to the last answer: what requests/s are divided by.
            "duration_s": round(max(0.0, self._last_end - self.timeline.t0), 3),
            "options": {
                "host": self.env.host,
                "host_header": o.host_header,
                "users": o.num_users,
                "rate": o.rate,
                "run_time": o.run_time,
                "max_requests": o.max_requests,
            },
            "checks": [c.to_json() for c in checks],
            "locust": {"requests": stats.num_requests, "failures": stats.num_failures},
            "totals": self.timeline.totals(),
            "shares": {group: s.to_json() for group, s in self.shares.items()},
            "extra": self.extra,
            "timeline": self.timeline.rows(),
        }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole-file replace, so a reader never sees half a document."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class ScenarioUser(FastHttpUser):
    """A simulated client: keeps its connection (keep-alive), paced so that all users
    together send ``--rate`` requests/s (constant pacing per user), or unpaced with 0."""

    abstract = True
    # Loopback answers in milliseconds; anything near these limits is a failure to show.
    network_timeout = 10.0
    connection_timeout = 5.0
    # One connection per user, like a browser tab (FastHttpUser's default pools 10).
    concurrency = 1
    _cp_last_run: float
    _cp_last_wait_time: float

    def wait_time(self) -> float:
        opts = self.environment.parsed_options
        if opts.rate <= 0:
            return 0.0
        interval = max(1, opts.num_users or 1) / opts.rate
        # Constant pacing (Locust's constant_pacing, per user): task time counts against
        # the interval, so the rate holds while answers stay faster than it.
        now = time.perf_counter()
        if not hasattr(self, "_cp_last_run"):
            self._cp_last_run, self._cp_last_wait_time = now, 0.0
        spent = now - self._cp_last_run - self._cp_last_wait_time
        self._cp_last_wait_time = max(0.0, interval - spent)
        self._cp_last_run = now
        return self._cp_last_wait_time

    @contextmanager
    def fetch(
        self,
        path: str,
        *,
        group: str,
        name: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[Answer]:
        """GET ``path`` (Host: ``--host-header``), counted under ``group``; the caller
        judges the :class:`Answer` inside the ``with`` block. Statuses >= 400 and
        transport errors fail on their own."""
        if _ABORTED.is_set():
            raise StopUser()
        send = {"Host": self.environment.parsed_options.host_header, **(headers or {})}
        with self.client.get(
            path, headers=send, name=name or group, catch_response=True, context={"group": group}
        ) as response:
            yield Answer(response)
