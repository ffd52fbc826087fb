"""``junction canary status|pause|resume|promote|abort [SERVICE] [--http HOST:PORT]``.

A thin client of the HTTP API (:mod:`junction.canary.api`) on the control plane's port
(or ``junction als serve``'s), so the command goes through the same store, with the same
CAS, as every other writer. Exit 0 on success, 1 when the API refuses (the reason is
printed), 2 when the port cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

__all__ = ["format_service", "run"]


def _request(method: str, url: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"null")
        except ValueError:
            body = {"error": exc.reason}
        return exc.code, body


def _when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def format_service(name: str, body: dict[str, Any], *, events: int = 5) -> str:
    """A few readable lines about one ramp."""
    policy = body.get("policy") or {}
    state = body.get("state")
    lines = []
    if state is None:
        lines.append(f"{name}: no state stored yet (the controller starts the ramp)")
    else:
        steps = policy.get("steps") or []
        at = body.get("step", -1)
        where = f" (step {at + 1}/{len(steps)})" if steps and at >= 0 else ""
        lines.append(
            f"{name}: {state['phase']} at {state['weight']}%{where}, candidate"
            f" {state['candidate']} vs baseline {state['baseline']}"
        )
        if state.get("reason"):
            lines.append(f"  {state['reason']}")
        if body.get("applies") is False:
            lines.append("  (stale: the config's canary names other clusters; not applied)")
    if policy:
        lines.append(
            f"  policy: steps {policy['steps']}, interval {policy['interval']:g}s,"
            f" alpha {policy.get('alpha')}, min-requests {policy['min_requests']},"
            f" max-error-rate {policy['max_error_rate']}"
        )
    tests = body.get("tests")
    if tests:
        lines.append(
            f"  tests: rollback e-value {tests.get('rollback_e')} (rolls back at"
            f" {tests.get('reject_at')}), errors {tests.get('errors_e')}, latency"
            f" {tests.get('latency_e')}, no-worse proof {tests.get('noninferior_e')}"
        )
    for e in (body.get("events") or [])[-events:]:
        lines.append(
            f"  {_when(e['at'])} {e['action']:<12} {e['from_weight']:>3}% -> {e['to_weight']:>3}%"
            f"  {e['reason']}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    base = f"http://{args.http}/canary"
    try:
        if args.action == "status":
            status, body = _request("GET", f"{base}/{args.service}" if args.service else base)
        else:
            if not args.service:
                print(f"junction canary {args.action}: name the SERVICE", file=sys.stderr)
                return 2
            status, body = _request("POST", f"{base}/{args.service}/{args.action}")
    except (urllib.error.URLError, OSError) as exc:
        print(f"junction canary: cannot reach http://{args.http}: {exc}", file=sys.stderr)
        return 2
    if status != 200:
        message = body.get("error") if isinstance(body, dict) else body
        print(f"junction canary {args.action}: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True), file=out)
    elif args.action == "status" and not args.service:
        services = body.get("services") or {}
        if not services:
            print("no canary ramps in the config", file=out)
        for name, one in services.items():
            print(format_service(name, one), file=out)
    elif args.action == "status":
        print(format_service(args.service, body, events=20), file=out)
    else:
        state = body["state"]
        print(
            f"{args.service}: {state['phase']} at {state['weight']}% ({state['reason']})", file=out
        )
    return 0
