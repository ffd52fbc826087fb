"""``junction drain`` and ``junction maintenance-agent``: thin clients of the drain API.

    junction drain SERVICE INSTANCE [--undo] [--reason TEXT] [--force] --http HOST:PORT
    junction maintenance-agent --service S --instance I --http HOST:PORT [--metadata-url URL]

``--http`` is a control plane's HTTP port (any replica: the drain goes to the shared store).
When ``JUNCTION_ADMIN_TOKEN`` is set, every call sends ``Authorization: Bearer <token>``.
``junction drain`` exits 0 on success, 1 when the API refuses (the reason is printed: e.g.
the drain would leave the service with no healthy instance), 2 when the port cannot be
reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

from junction.admin import auth_headers
from junction.drain.client import drain_url

__all__ = ["COMMANDS", "add_parsers", "request", "run_drain"]

def request(
    method: str, url: str, body: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """One JSON call: ``(status, decoded body)``; raises ``urllib.error.URLError``/``OSError``
    when the server cannot be reached."""
    headers = {"Content-Type": "application/json", **auth_headers()}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            decoded = json.loads(raw or b"null")
        except ValueError:
            decoded = {"error": raw.decode(errors="replace").strip() or exc.reason}
        return exc.code, decoded


def run_drain(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    url = drain_url(args.http, args.service, args.instance)
    try:
        if args.undo:
            status, body = request("DELETE", url)
        else:
            status, body = request(
                "POST", url, {"reason": args.reason, "force": args.force, "by": "operator"}
            )
    except (urllib.error.URLError, OSError) as exc:
        print(f"junction drain: cannot reach http://{args.http}: {exc}", file=sys.stderr)
        return 2
    if status != 200:
        message = body.get("error") if isinstance(body, dict) else body
        print(f"junction drain: {message}", file=sys.stderr)
        return 1
    if args.undo:
        print(f"{args.instance} of {args.service}: undrained", file=out)
    else:
        print(f"{args.instance} of {args.service}: draining ({body.get('effect')})", file=out)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``drain`` and ``maintenance-agent``."""
    d = sub.add_parser("drain", help="drain one instance (no new requests), or undo it")
    d.add_argument("service", metavar="SERVICE", help="the service (cluster) name")
    d.add_argument("instance", metavar="INSTANCE", help="Consul service ID, or ADDRESS:PORT")
    d.add_argument("--undo", action="store_true", help="undrain")
    d.add_argument("--reason", default="", help="shown in /status")
    d.add_argument(
        "--force", action="store_true",
        help="drain even if it leaves the service without a healthy instance",
    )  # fmt: skip
    d.add_argument("--http", required=True, metavar="HOST:PORT", help="a control plane's port")
    m = sub.add_parser(
        "maintenance-agent",
        help="drain this instance while GCE announces a host maintenance event",
    )
    m.add_argument("--service", required=True)
    m.add_argument("--instance", required=True, help="Consul service ID, or ADDRESS:PORT")
    m.add_argument("--http", required=True, metavar="HOST:PORT", help="a control plane's port")
    m.add_argument(
        "--metadata-url", default="http://metadata.google.internal",
        help="the metadata server (default http://metadata.google.internal)",
    )  # fmt: skip
    m.add_argument(
        "--force", action="store_true",
        help="drain even if it leaves the service without a healthy instance",
    )  # fmt: skip


def _agent(args: argparse.Namespace) -> int:
    from junction.drain.agent import run_agent

    return run_agent(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "drain": run_drain,
    "maintenance-agent": _agent,
}
