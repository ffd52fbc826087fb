"""Command-line surface of the access-log feedback loop, plugged into ``junction``.

Flags of ``junction up`` and ``junction serve`` (:func:`add_run_arguments`)::

    --als-port N             the in-process ALS receiver's port (up: default 0, a free port,
                             told to Envoy through its bootstrap; serve: none unless given)
    --no-als                 run no receiver here; with --als-port, Envoy logs to that port
                             (an external `junction als serve`)
    --als-flush-interval S   Envoy's buffer_flush_interval (default 1 s)
    --als-buffer-bytes N     Envoy's buffer_size_bytes (default 16384)
    --als-log PATH|-         JSON-lines access log (rotated at --als-log-max-bytes,
                             --als-log-backups kept); "-" is stdout. Default: none
    --canary-events PATH     the canary's decisions as JSON lines (for `junction report`)
    --state-dir DIR          canary states as files (default: Consul KV with --consul-addr,
                             else ~/.local/state/junction/canary)
    --no-canary              receive and keep windows, but run no canary controller
    --canary-replica ID      this replica's id in a fleet sharing Consul (default: the
                             Envoy node id, else HOST-PID)
    --canary-leader-ttl S    the leader's Consul session TTL (default 10 s)
    --canary-lock-delay S    the session's lock-delay (default: the TTL)
    --canary-stale-after S   a replica's evidence unchanged this long leaves the merge (10 s)

Commands (:func:`add_parsers`)::

    junction als serve ...                       the receiver + controller alone
    junction canary status|pause|resume|promote|abort SERVICE [--http HOST:PORT]
    junction canary replay -c CONFIG --log PATH [--log PATH ...] [--json]
    junction canary simulate -c CONFIG --baseline-error P --candidate-error P --rps N --runs K
    junction report --log PATH [--events PATH] [--png OUT.png] [--control ARM]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from junction.errors import JunctionError

__all__ = ["COMMANDS", "add_parsers", "add_run_arguments", "run_settings"]

Port = Callable[[str], int]


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be above 0")
        return value

    return parse


def _add_log_arguments(s: argparse.ArgumentParser, prefix: str) -> None:
    s.add_argument(f"--{prefix}log", metavar="PATH|-", help="JSON-lines access log ('-': stdout)")
    s.add_argument(f"--{prefix}log-max-bytes", type=_positive(int), default=100 << 20)
    s.add_argument(f"--{prefix}log-backups", type=int, default=5)


def add_run_arguments(s: argparse.ArgumentParser, port: Port, *, up: bool) -> None:
    """The ALS and canary flags of ``junction up`` / ``junction serve``."""
    g = s.add_argument_group("access logs and canary (junction.als, junction.canary)")
    g.add_argument(
        "--als-port",
        type=port,
        default=0 if up else None,
        help="ALS receiver port (0: a free one)" + (" [default 0]" if up else ""),
    )
    g.add_argument("--no-als", action="store_true", help="run no ALS receiver in this process")
    g.add_argument("--als-flush-interval", type=_positive(float), default=1.0, metavar="SECONDS")
    g.add_argument("--als-buffer-bytes", type=int, default=16384, metavar="BYTES")
    _add_log_arguments(g, "als-")  # type: ignore[arg-type]
    g.add_argument("--canary-events", metavar="PATH", help="canary decisions as JSON lines")
    g.add_argument("--state-dir", help="canary states as files in DIR (not Consul KV)")
    g.add_argument("--no-canary", action="store_true", help="run no canary controller here")
    add_fleet_arguments(g)  # type: ignore[arg-type]


def add_fleet_arguments(g: argparse.ArgumentParser) -> None:
    """Flags of the fleet's decision (with Consul; junction.canary.coordinator)."""
    g.add_argument("--canary-replica", default="", metavar="ID", help="this replica's id")
    g.add_argument(
        "--canary-leader-ttl", type=_positive(float), default=10.0, metavar="SECONDS",
        help="session TTL of the replica that decides (Consul's minimum: 10 s by default)",
    )  # fmt: skip
    g.add_argument(
        "--canary-lock-delay", type=float, default=None, metavar="SECONDS",
        help="the session's lock-delay (default: the TTL)",
    )  # fmt: skip
    g.add_argument(
        "--canary-stale-after", type=_positive(float), default=10.0, metavar="SECONDS",
        help="drop a replica's evidence from the merge after this long without an update",
    )  # fmt: skip


def fleet_settings(args: argparse.Namespace, node_id: str = "") -> Any:
    """A :class:`junction.canary.coordinator.FleetSettings` from the flags."""
    from junction.canary.coordinator import FleetSettings

    return FleetSettings(
        replica=args.canary_replica or node_id,
        leader_ttl=args.canary_leader_ttl,
        lock_delay=args.canary_lock_delay,
        stale_after=args.canary_stale_after,
    )


def run_settings(args: argparse.Namespace, *, up: bool) -> dict[str, Any]:
    """``junction.app.Settings`` fields from the flags of :func:`add_run_arguments`."""
    from junction.loop.service import AlsSettings
    from junction.xds.translate_als import AccessLogOptions

    in_process = not args.no_als and args.als_port is not None
    als = None
    if in_process:
        als = AlsSettings(
            host=args.host,
            port=args.als_port,
            log_path=args.als_log,
            log_max_bytes=args.als_log_max_bytes,
            log_backups=args.als_log_backups,
            events_path=args.canary_events,
            controller=not args.no_canary,
            fleet=fleet_settings(args, getattr(args, "node_id", "") or ""),
        )
    external = args.als_port if args.no_als else None
    # serve: the Envoy's bootstrap comes from `junction bootstrap`, which always has the
    # junction_als cluster; up: only when a receiver (here or external) has a port.
    logs = in_process or bool(external) or not up
    return {
        "als": als,
        "als_port": external,
        "access_log": AccessLogOptions(
            flush_interval=args.als_flush_interval, buffer_size_bytes=args.als_buffer_bytes
        )
        if logs
        else None,
        "state_dir": args.state_dir,
    }


def add_parsers(sub: argparse._SubParsersAction, port: Port) -> None:  # type: ignore[type-arg]
    """``als``, ``canary`` and ``report``."""
    a = sub.add_parser("als", help="the access-log receiver and canary controller, alone")
    asub = a.add_subparsers(dest="als_command", required=True, metavar="SUBCOMMAND")
    s = asub.add_parser("serve", help="run until SIGINT/SIGTERM")
    s.add_argument("-c", "--config", help="config file (for the canary policies)")
    s.add_argument("--consul-addr", help="Consul HTTP address (config and canary states)")
    s.add_argument("--consul-key", help="KV key holding the config YAML")
    s.add_argument("--host", default="127.0.0.1", help="address of both ports")
    s.add_argument("--port", type=port, default=9001, help="the gRPC ALS port (0: free)")
    s.add_argument("--http-port", type=port, default=9011, help="/als, /canary, /healthz")
    s.add_argument("--envoy-admin", help="HOST:PORT of an Envoy's admin (its ALS drops)")
    _add_log_arguments(s, "")
    s.add_argument("--canary-events", metavar="PATH", help="canary decisions as JSON lines")
    s.add_argument("--state-dir", help="canary states as files in DIR (not Consul KV)")
    s.add_argument("--no-canary", action="store_true", help="run no canary controller")
    s.add_argument("--max-message-bytes", type=_positive(int), default=4 << 20)
    s.add_argument("--max-queue-bytes", type=_positive(int), default=64 << 20)
    s.add_argument("--slot-seconds", type=_positive(float), default=1.0)
    s.add_argument("--tick", type=_positive(float), default=0.5, help="controller period (s)")
    s.add_argument(
        "--insecure",
        action="store_true",
        help="allow the plaintext ALS port beyond loopback (no TLS here)",
    )
    add_fleet_arguments(s)

    from junction.canary.offline_cli import add_offline_parsers

    c = sub.add_parser("canary", help="show, steer, replay or simulate a canary ramp")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, helptext in (
        ("status", "show every ramp, or one"),
        ("pause", "freeze a ramp at its weight"),
        ("resume", "continue a pause; restart a rollback or abort at the first step"),
        ("promote", "send the candidate to 100 now"),
        ("abort", "send the candidate to 0 now"),
    ):
        a = csub.add_parser(action, help=f"{helptext} (over HTTP)")
        a.add_argument("service", nargs="?", help="the service (status: all when omitted)")
        a.add_argument(
            "--http",
            default="127.0.0.1:8081",
            metavar="HOST:PORT",
            help="the control plane's (or `junction als serve`'s) HTTP port",
        )
        a.add_argument("--json", action="store_true", help="print the raw JSON")
    add_offline_parsers(csub)

    r = sub.add_parser("report", help="experiment results and canary charts from access logs")
    r.add_argument("--log", required=True, action="append", help="JSON-lines access log(s)")
    r.add_argument("--events", action="append", default=[], help="canary events JSON lines")
    r.add_argument("--png", help="write the canary chart (weights and error rates) here")
    r.add_argument("--control", default="control", help="the control arm's name")
    r.add_argument("--alpha", type=float, default=0.05, help="significance level")
    r.add_argument("--json", action="store_true", help="print the results as JSON")


def _als(args: argparse.Namespace) -> int:
    from junction.admin import ExposureError, admin_token, exposure_problems
    from junction.canary.store import make_store
    from junction.catalog.consul import ConsulConfig
    from junction.catalog.file import FileConfig
    from junction.catalog.offloop import OffLoopConfig
    from junction.catalog.source import ConfigSource
    from junction.loop.service import AlsSettings
    from junction.loop.standalone import run_als

    if bool(args.consul_key) == bool(args.config):
        raise JunctionError("give -c CONFIG or --consul-addr with --consul-key (not both)")
    if args.consul_key and not args.consul_addr:
        raise JunctionError("--consul-key needs --consul-addr")
    # Both ports share --host: the admin side (/canary commands) and Envoy's (access logs).
    problems = exposure_problems(
        admin_host=args.host,
        token=admin_token(),
        envoy_host=args.host,
        tls=False,
        insecure=args.insecure,
    )
    if problems:
        raise ExposureError("refusing to start:\n  " + "\n  ".join(problems))
    source: ConfigSource = OffLoopConfig(  # parsed off the loop that receives the logs
        ConsulConfig(args.consul_addr, args.consul_key)
        if args.consul_key
        else FileConfig(args.config)
    )
    settings = AlsSettings(
        host=args.host,
        port=args.port,
        log_path=args.log,
        log_max_bytes=args.log_max_bytes,
        log_backups=args.log_backups,
        events_path=args.canary_events,
        controller=not args.no_canary,
        max_message_bytes=args.max_message_bytes,
        max_queue_bytes=args.max_queue_bytes,
        slot_seconds=args.slot_seconds,
        tick=args.tick,
        fleet=fleet_settings(args),
    )
    store = make_store(consul_addr=args.consul_addr, state_dir=args.state_dir)
    coro = run_als(
        settings,
        source,
        store,
        http_host=args.host,
        http_port=args.http_port,
        envoy_admin=args.envoy_admin,
    )
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def _canary(args: argparse.Namespace) -> int:
    if args.action == "replay":
        from junction.canary.offline_cli import run_replay

        return run_replay(args)
    if args.action == "simulate":
        from junction.canary.offline_cli import run_simulate

        return run_simulate(args)
    from junction.canary.cli import run

    return run(args)


def _report(args: argparse.Namespace) -> int:
    from junction.als.report import run

    return run(args, sys.stdout)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "als": _als,
    "canary": _canary,
    "report": _report,
}
