"""Scenario 4, canary with a fault: the candidate version fails a share of its requests and
the controller, reading the access logs, rolls it back while Locust counts its own errors.

At the start the demo upstream(s) of the candidate (``--fault-upstream``) are told to
answer 500 to ``--fault-rate`` of requests (``POST /_control?error_rate=...``,
examples/upstream.py) and the ramp is restarted if an earlier run left it rolled back
(``POST /canary/SERVICE/resume``; ``--no-reset`` to leave it). Requests to ``/api`` carry
stable user ids (``x-user-id``: the canary's buckets are sticky per user). Every 0.5 s the
ramp's state is read from the control plane (``GET /canary/SERVICE``). At the end the fault
is removed, and the run passes when:

- the ramp reached ``--expect-phase`` (``rolled_back``; ``promoted`` with ``--fault-rate 0``);
- the baseline answered without a failure (every failure Locust saw was the candidate's);
- after a rollback, requests sent once ``--grace`` seconds had passed did not fail.

Locust's own error count (its failures, by cluster) is put beside the controller's evidence
(the candidate's error rate that triggered the rollback) in the results.

    locust -f loadtest/scenarios/canary.py --headless -u 20 -r 20 --run-time 40s \
        --host http://127.0.0.1:8000 --rate 200 \
        --control http://127.0.0.1:8081 --fault-upstream http://127.0.0.1:18082
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import gevent
from _checks import Check, LoadTestError, shares
from _scenario import Scenario, ScenarioUser, log
from locust import task

SCENARIO = Scenario("canary", failure_budget=False)
#: Requests needed after the rollback (and its grace) before "no failures since" may pass.
MIN_AFTER = 20
#: (seconds since start, candidate weight, phase) each time either changed.
STATES: list[tuple[float, int, str]] = []
#: The status poller and the last ramp status it read.
POLL: dict[str, Any] = {"greenlet": None, "last": None}


@SCENARIO.options
def _options(g: Any) -> None:
    g.add_argument(
        "--control",
        default="http://127.0.0.1:8081",
        help="the control plane's HTTP port (GET /canary/SERVICE)",
    )
    g.add_argument("--service", default="web-api", help="the service whose canary ramps")
    g.add_argument(
        "--fault-upstream",
        action="append",
        default=[],
        help="a candidate upstream to make fail (repeat for several; default "
        "http://127.0.0.1:18082, the example's web-api-go)",
    )
    g.add_argument("--fault-rate", type=float, default=0.2, help="share of 500s (0: healthy)")
    g.add_argument(
        "--expect-phase",
        default="rolled_back",
        help="the ramp's phase at the end (rolled_back, promoted, ramping)",
    )
    g.add_argument(
        "--grace",
        type=float,
        default=2.0,
        help="seconds after the rollback before failures must stop",
    )
    g.add_argument("--population", type=int, default=5000, help="distinct user ids")
    g.add_argument(
        "--no-reset",
        action="store_true",
        default=False,
        help="do not restart a ramp an earlier run left rolled back",
    )


def _http(method: str, url: str, timeout: float = 2.0) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        body: dict[str, Any] = json.loads(resp.read() or b"{}")
        return body


def _canary_url() -> str:
    return f"{SCENARIO.opts.control.rstrip('/')}/canary/{SCENARIO.opts.service}"


def _faults() -> list[str]:
    return SCENARIO.opts.fault_upstream or ["http://127.0.0.1:18082"]


def _set_fault(rate: float) -> None:
    for upstream in _faults():
        _http("POST", f"{upstream.rstrip('/')}/_control?error_rate={rate}")


@SCENARIO.on_start
def _start() -> None:
    opts = SCENARIO.opts
    SCENARIO.guard(opts.control, "--control")
    for upstream in _faults():
        SCENARIO.guard(upstream, "--fault-upstream")
    try:
        body = _http("GET", _canary_url())
    except urllib.error.HTTPError as exc:
        raise LoadTestError(
            f"{_canary_url()}: {exc.code}: the stack has no canary ramp for {opts.service} "
            "(run the runner's own stack: make loadtest SCENARIO=canary, or serve "
            "examples/loadtest-canary.yaml)"
        ) from None
    phase = (body.get("state") or {}).get("phase")
    if phase in ("rolled_back", "aborted", "paused") and not opts.no_reset:
        log.warning("canary %s was %s: resuming it (restarts the ramp)", opts.service, phase)
        _http("POST", f"{_canary_url()}/resume")
    _set_fault(opts.fault_rate)
    SCENARIO.extra["fault"] = {"upstreams": _faults(), "error_rate": opts.fault_rate}
    POLL["greenlet"] = gevent.spawn(_poll)


def _poll() -> None:
    while True:
        _read_state()
        gevent.sleep(0.5)


def _read_state() -> None:
    timeline = SCENARIO.timeline
    try:
        body = _http("GET", _canary_url())
    except (OSError, ValueError) as exc:
        log.warning("canary status: %s", exc)
        return
    POLL["last"] = body
    state = body.get("state") or {}
    weight, phase = int(state.get("weight", -1)), str(state.get("phase", "?"))
    SCENARIO.live.update(weight=weight, phase=phase)
    if timeline is not None and (not STATES or STATES[-1][1:] != (weight, phase)):
        STATES.append((round(time.time() - timeline.t0, 2), weight, phase))


@SCENARIO.on_stop
def _stop() -> None:
    greenlet = POLL["greenlet"]
    if greenlet is not None:
        greenlet.kill(block=False)
    _read_state()
    _set_fault(0.0)


class Shopper(ScenarioUser):
    """A front end calling for signed-in users in turn: each request carries one of
    ``--population`` stable ids, so the canary's buckets keep each user on one side per
    step, while the candidate still gets its weight's share of requests from any number
    of Locust users."""

    @task
    def browse(self) -> None:
        uid = f"user-{random.randrange(self.environment.parsed_options.population):06d}"
        path = f"/api/items/{random.randrange(10_000)}"
        with self.fetch(path, group="/api", headers={"x-user-id": uid}):
            pass  # a 500 fails by itself: Locust keeps its own error count


@SCENARIO.check
def _verdicts() -> Iterator[Check]:
    timeline, opts = SCENARIO.timeline, SCENARIO.opts
    assert timeline is not None
    body: dict[str, Any] = POLL["last"] or {}
    state = body.get("state") or {}
    policy = body.get("policy") or {}
    baseline, candidate = policy.get("baseline", "?"), policy.get("candidate", "?")
    events = body.get("events") or []
    rollback = next((e for e in reversed(events) if e.get("action") == "rollback"), None)
    rolled_at = round(rollback["at"] - timeline.t0, 2) if rollback else None
    SCENARIO.extra["canary"] = {
        "baseline": baseline,
        "candidate": candidate,
        "states": STATES,
        "phase": state.get("phase"),
        "weight": state.get("weight"),
        "rollback_at": rolled_at,
        "rollback": rollback,
        "events": [
            {k: e.get(k) for k in ("at", "action", "from_weight", "to_weight", "reason")}
            for e in events
        ],
    }
    SCENARIO.shares["/api"] = shares("/api", timeline.group_counts("/api"))
    by_cluster = timeline.total.cluster_failures
    counted = timeline.total.clusters
    SCENARIO.extra["locust_errors"] = {
        c: {"requests": counted[c], "failures": by_cluster[c]} for c in sorted(counted)
    }
    phase = state.get("phase")
    # A rollback left by an earlier run (--no-reset) does not count: it must happen here.
    fresh = opts.expect_phase != "rolled_back" or (rolled_at is not None and rolled_at >= 0)
    yield Check(
        f"the ramp ends {opts.expect_phase}",
        phase == opts.expect_phase and fresh,
        f"phase {phase} at weight {state.get('weight')}"
        + (f"; rolled back at {rolled_at} s: {rollback.get('reason')}" if rollback else ""),
    )
    others = sum(n for c, n in by_cluster.items() if c != candidate)
    yield Check(
        f"the baseline ({baseline}) served without failures",
        others == 0,
        f"{others} failures outside {candidate}; {by_cluster[candidate]} of "
        f"{counted[candidate]} requests to {candidate} failed",
    )
    if rolled_at is not None:
        since = rolled_at + opts.grace
        requests, failures = timeline.failures_since(since)
        name = f"no failures from {since:.1f} s (rollback + {opts.grace:g} s)"
        if requests < MIN_AFTER:
            yield Check(name, False, f"only {requests} requests after it (need {MIN_AFTER})")
        else:
            yield Check(name, failures == 0, f"{failures} of {requests} requests failed")
