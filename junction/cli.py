"""The ``junction`` command.

    junction validate -c CONFIG [--envoy]
    junction render -c CONFIG --instances FILE
    junction bootstrap [--xds-port N] [--admin-port N] [--node-id ID] [--delta] ...
    junction up -c CONFIG --instances FILE [--http-port N] [--xds-port N]
                [--envoy-admin-port N] [--maintenance-file PATH] [--delta]
    junction serve -c CONFIG --instances FILE [--envoy-admin HOST:PORT] ...
    junction extproc serve|sign-pin ...   (the decision service: junction.extproc.cli)
    junction als serve ...                (the access-log receiver alone: junction.als.cli)
    junction canary status|pause|resume|promote|abort [SERVICE] [--http HOST:PORT]
    junction canary replay|simulate -c CONFIG ...   (offline: junction.canary.offline_cli)
    junction report --log PATH [--events PATH] [--png OUT.png]

``--consul-addr ADDR --consul-key KEY`` switch ``up`` and ``serve`` to Consul: config from
the KV key, instances from the catalog (unless ``--instances`` is also given).
Exit codes: 0 success, 1 invalid input (errors on stderr, each naming what is wrong),
2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from junction.als import cli as als_cli
from junction.catalog.file import load_instances
from junction.catalog.model import Catalog
from junction.config.errors import ConfigError, Problem
from junction.config.load import config_version, load_config
from junction.errors import JunctionError
from junction.extproc import cli as extproc_cli

__all__ = ["main"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number 0..65535")
    return value


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(path, [Problem("", f"cannot read: {reason}")]) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="junction", description="A control plane for Envoy.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check a config file; exit 1 with path-named errors")
    v.add_argument("-c", "--config", required=True)
    v.add_argument(
        "--envoy", action="store_true", help="also run `envoy --mode validate` on the result"
    )
    v.add_argument("--instances", help="instances file to render with (with --envoy)")

    r = sub.add_parser("render", help="print the Envoy resources as proto3 JSON")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--instances", required=True)

    b = sub.add_parser("bootstrap", help="print an Envoy bootstrap (JSON) for this control plane")
    b.add_argument("--node-id", default="junction-envoy")
    b.add_argument("--node-cluster", default="junction")
    b.add_argument("--zone", default="")
    b.add_argument("--region", default="")
    b.add_argument("--xds-host", default="127.0.0.1")
    b.add_argument("--xds-port", type=_port, default=18000)
    b.add_argument("--admin-port", type=_port, default=9901)
    b.add_argument("--delta", action="store_true", help="incremental (delta) ADS")

    for name, helptext in (
        ("up", "run the control plane and a real Envoy until SIGINT/SIGTERM"),
        ("serve", "run the control plane alone (Envoy managed elsewhere)"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("-c", "--config", help="config file (embedded default)")
        s.add_argument("--instances", help="instances file (embedded default)")
        s.add_argument("--consul-addr", help="Consul HTTP address, e.g. 127.0.0.1:8500")
        s.add_argument("--consul-key", help="KV key holding the config YAML")
        s.add_argument("--host", default="127.0.0.1", help="address for the xDS and HTTP ports")
        s.add_argument("--http-port", type=_port, default=8081, help="/healthz and /status")
        s.add_argument("--xds-port", type=_port, default=18000)
        s.add_argument("--maintenance-file", help="/healthz answers 599 while this file exists")
        s.add_argument("--node-id", default="", help="Envoy node id (up)")
        s.add_argument("--zone", default="")
        s.add_argument("--region", default="")
        if name == "up":
            s.add_argument("--envoy-admin-port", type=_port, default=9901)
            extproc_cli.add_up_arguments(s, _port)
            s.add_argument("--envoy-log-level", default="warning")
            s.add_argument("--delta", action="store_true", help="Envoy uses delta ADS")
        else:
            s.add_argument("--envoy-admin", help="HOST:PORT of the Envoy's admin API")
        als_cli.add_run_arguments(s, _port, up=name == "up")
    extproc_cli.add_parser(sub, _port)
    als_cli.add_parsers(sub, _port)
    return p


def _validate(args: argparse.Namespace) -> int:
    config = load_config(_read(args.config), args.config)
    if args.envoy:
        from junction.xds.translate import translate
        from junction.xds.validate import envoy_validate

        services = load_instances(_read(args.instances), args.instances) if args.instances else {}
        envoy_validate(translate(config, Catalog(services)))
    print(f"{args.config}: valid (version {config_version(_read(args.config))})")
    return 0


def _render(args: argparse.Namespace) -> int:
    from junction.xds.render import render
    from junction.xds.translate import translate

    text = _read(args.config)
    config = load_config(text, args.config)
    services = load_instances(_read(args.instances), args.instances)
    snapshot = translate(
        config, Catalog(services), origin=args.config, config_version=config_version(text)
    )
    sys.stdout.buffer.write(orjson.dumps(render(snapshot), option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    from junction.xds.bootstrap import BootstrapOptions, bootstrap

    opts = BootstrapOptions(
        node_id=args.node_id,
        node_cluster=args.node_cluster,
        zone=args.zone,
        region=args.region,
        xds_host=args.xds_host,
        xds_port=args.xds_port,
        admin_port=args.admin_port,
        delta=args.delta,
    )
    sys.stdout.buffer.write(orjson.dumps(bootstrap(opts), option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _run(args: argparse.Namespace) -> int:
    # Envoy is forked while gRPC's threads run; gRPC's fork handlers are for children that
    # keep using gRPC, which Envoy (exec'd at once) does not. Set before grpc is imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from junction.app import Settings, run_until_signalled

    up = args.command == "up"
    settings = Settings(
        config_path=args.config,
        instances_path=args.instances,
        consul_addr=args.consul_addr,
        consul_key=args.consul_key,
        host=args.host,
        http_port=args.http_port,
        xds_port=args.xds_port,
        run_envoy=up,
        envoy_admin_port=args.envoy_admin_port if up else 0,
        envoy_admin=None if up else args.envoy_admin,
        envoy_log_level=args.envoy_log_level if up else "warning",
        maintenance_file=args.maintenance_file,
        delta=args.delta if up else False,
        extproc=extproc_cli.sidecar_settings(args) if up else None,
        node_id=args.node_id,
        zone=args.zone,
        region=args.region,
        **als_cli.run_settings(args, up=up),
    )
    settings.check()
    try:
        import uvloop

        return uvloop.run(run_until_signalled(settings))
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(run_until_signalled(settings))


_COMMANDS = {
    "validate": _validate,
    "render": _render,
    "bootstrap": _bootstrap,
    "up": _run,
    "serve": _run,
    "extproc": extproc_cli.run,
    **als_cli.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except JunctionError as exc:
        print(f"junction {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
