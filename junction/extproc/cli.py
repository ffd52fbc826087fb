"""``junction extproc ...``: the decision service's subcommands.

    junction extproc serve -c CONFIG --instances FILE [--workers N] [--http-port N]
                           [--grpc-port N] [--stats-port N] [--max-body BYTES] ...
    junction extproc sign-pin --key-env VAR --version V [--ttl SECONDS]

``serve`` takes the same source flags as ``junction serve`` (``--consul-addr`` and
``--consul-key`` for Consul). :func:`add_parser` plugs them into the ``junction`` parser.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from junction.errors import JunctionError

if TYPE_CHECKING:  # the service pulls in grpc and aiohttp; `junction validate` needs neither
    from junction.extproc.service import SidecarSettings

__all__ = ["add_parser", "add_up_arguments", "run", "sidecar_settings"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _optional_port(text: str) -> int | None:
    """A port 0..65535, or ``off``."""
    if text == "off":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number or 'off'") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number 0..65535")
    return value


def add_parser(sub: argparse._SubParsersAction, port: Callable[[str], int]) -> None:  # type: ignore[type-arg]
    """Add ``extproc`` (with ``serve`` and ``sign-pin``) to the ``junction`` subcommands."""
    e = sub.add_parser("extproc", help="the per-request decision service (Envoy ext_proc)")
    esub = e.add_subparsers(dest="extproc_command", required=True, metavar="SUBCOMMAND")

    s = esub.add_parser("serve", help="run the decision service until SIGINT/SIGTERM")
    s.add_argument("-c", "--config", help="config file (embedded default)")
    s.add_argument("--instances", help="instances file (embedded default)")
    s.add_argument("--consul-addr", help="Consul HTTP address, e.g. 127.0.0.1:8500")
    s.add_argument("--consul-key", help="KV key holding the config YAML")
    s.add_argument("--host", default="127.0.0.1", help="address of every port")
    s.add_argument("--http-port", type=_optional_port, default=9003,
                   help="Envoy http_service transport ('off' to disable)")  # fmt: skip
    s.add_argument("--grpc-port", type=_optional_port, default=9002,
                   help="Envoy gRPC transport ('off' to disable)")  # fmt: skip
    s.add_argument("--stats-port", type=port, default=9004, help="GET /stats and /healthz")
    s.add_argument("--workers", type=_count, default=os.cpu_count() or 1,
                   help="worker processes sharing the ports (default: cores)")  # fmt: skip
    s.add_argument("--max-body", type=_count, default=1 << 20, help="largest HTTP body (413)")
    s.add_argument("--idle-timeout", type=float, default=60.0, help="seconds")
    s.add_argument("--request-timeout", type=float, default=10.0, help="seconds")
    s.add_argument("--state-dir", help="canary states as files in DIR (default: Consul KV "
                   "with --consul-addr, else ~/.local/state/junction/canary)")  # fmt: skip

    p = esub.add_parser("sign-pin", help="print a signed pin (for trust: hmac)")
    p.add_argument("--key-env", required=True, help="environment variable holding the key")
    p.add_argument("--version", required=True, dest="pin_version")
    p.add_argument("--ttl", type=_count, default=3600, help="seconds the pin stays valid")


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 (off) or more")
    return value


def add_up_arguments(parser: argparse.ArgumentParser, port: Callable[[str], int]) -> None:
    """``junction up``'s flags for the decision service it runs beside Envoy."""
    parser.add_argument("--extproc-workers", type=_workers, default=os.cpu_count() or 1,
                        help="decision service worker processes (0: do not run it)")  # fmt: skip
    # Free ports by default: the bootstrap names the ones bound, and two stacks on one host
    # (or two test runs) never collide. The stats port is logged at start.
    parser.add_argument("--extproc-http-port", type=port, default=0)
    parser.add_argument("--extproc-grpc-port", type=port, default=0)
    parser.add_argument("--extproc-stats-port", type=port, default=0,
                        help="the decision service's GET /stats and /healthz")  # fmt: skip


def sidecar_settings(args: argparse.Namespace) -> SidecarSettings | None:
    """What :func:`add_up_arguments`' flags ask for (None: ``--extproc-workers 0``)."""
    from junction.extproc.service import SidecarSettings

    if args.extproc_workers == 0:
        return None
    return SidecarSettings(
        workers=args.extproc_workers,
        http_port=args.extproc_http_port,
        grpc_port=args.extproc_grpc_port,
        stats_port=args.extproc_stats_port,
    )


def run(args: argparse.Namespace) -> int:
    """Dispatch ``junction extproc <subcommand>``."""
    if args.extproc_command == "sign-pin":
        return _sign_pin(args)
    return _serve(args)


def _sign_pin(args: argparse.Namespace) -> int:
    from junction.extproc.pins import sign_pin

    key = os.environ.get(args.key_env)
    if not key:
        raise JunctionError(f"environment variable {args.key_env} is not set")
    print(sign_pin(key.encode(), args.pin_version, int(time.time()) + args.ttl))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from junction.canary.store import make_store
    from junction.catalog.choose import SourceChoice
    from junction.extproc.http_adapter import HttpLimits
    from junction.extproc.service import ServiceSettings, run_until_signalled

    sources = SourceChoice(
        config_path=args.config,
        instances_path=args.instances,
        consul_addr=args.consul_addr,
        consul_key=args.consul_key,
    )
    problem = sources.problem()
    if problem is not None:
        raise JunctionError(problem)
    if args.idle_timeout <= 0 or args.request_timeout <= 0:
        raise JunctionError("--idle-timeout and --request-timeout must be positive")
    settings = ServiceSettings(
        config_source=sources.config_source(),
        catalog_source=sources.catalog_source(),
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        stats_port=args.stats_port,
        workers=args.workers,
        limits=HttpLimits(
            max_body=args.max_body,
            idle_timeout=args.idle_timeout,
            request_timeout=args.request_timeout,
        ),
        log_level=args.log_level,
        canary_store=make_store(consul_addr=args.consul_addr, state_dir=args.state_dir),
    )
    import uvloop

    return uvloop.run(run_until_signalled(settings))
