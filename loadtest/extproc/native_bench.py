#!/usr/bin/env python3
"""Native decisions against plain routes, ext_proc and Lua (issue 13), side by side in one
run, on one machine, with one load generator and one upstream.

Rows (each its own Envoy, Junction's own translation rendered static; the same upstream, a
second Envoy answering from ``direct_response``):

- **plain routes**: no ``versions`` section, no decision at all (the floor);
- **native pin**: pins (``trust: any``) and a canary on ``/api``, decided by Envoy's
  routes; wrk sends ``x-junction-version: go``;
- **native canary**: the same config; a fresh ``x-user-id`` per request (``canary.lua``),
  so Envoy hashes every request's key;
- **ext_proc http_service (experiment)**: an experiment on ``/api`` puts the route on the
  decision service (``junction extproc serve``, http_service transport); fresh keys;
- **Lua filter**: ``envoy/pin.lua`` in place of the ext_proc filter on the service's
  wiring (``decision.force-service``), pinned requests.

The decision service runs for every row with decisions, so its CPU per request shows that
native rows never call it. Before measuring, each row is checked to decide for real (a
pinned request lands on the pinned version; a keyed one carries its decision tag).
Rows are interleaved round by round (A B C D E, A B C D E, ...: the machine is shared and
loaded); per row the median-throughput run is kept, and its ratio to plain routes of the
same round is reported too (median of the per-round ratios).

    .venv/bin/python loadtest/extproc/native_bench.py --duration 5 --repeat 3 \\
        --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (loadtest/extproc/bench.py: wrk, processes, Envoy configs)

START, END = "<!-- native-bench:start -->", "<!-- native-bench:end -->"

PLAIN = bench.CONFIG
NATIVE = (
    bench.CONFIG
    + """\
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{trust: any}}
    canary: {{version: go, weight: 10, key: {{header: x-user-id}}}}
decision: {{transport: http, timeout: 1{force}}}
"""
)
EXPERIMENT = (
    bench.CONFIG
    + """\
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    canary: {{version: go, weight: 10, key: {{header: x-user-id}}}}
experiments:
  feed:
    service: web-api
    match: {{prefix: /api}}
    key: {{header: x-user-id}}
    arms: {{control: {{weight: 50}}, treatment: {{weight: 50, version: go}}}}
decision: {{transport: http, timeout: 1}}
"""
)


@dataclass(frozen=True)
class Row:
    name: str
    document: str  # a format string: {listener}
    pinned: bool  # wrk sends the pin header; else a fresh x-user-id per request
    service: bool  # run the decision service
    lua: bool = False


ROWS = [
    Row("plain routes (no decision)", PLAIN, pinned=True, service=False),
    Row("native pin", NATIVE.replace("{force}", ""), pinned=True, service=True),
    Row("native canary (fresh key per request)", NATIVE.replace("{force}", ""), False, True),
    Row("ext_proc http_service (experiment route)", EXPERIMENT, pinned=False, service=True),
    Row(
        "Lua filter (envoy/pin.lua)",
        NATIVE.replace("{force}", ", force-service: true"),
        pinned=True,
        service=False,
        lua=True,
    ),
]


def get(port: int, headers: dict[str, str]) -> str:
    """The body of one GET (the upstream answers with its version's name)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/x", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


@contextlib.contextmanager
def running(
    row: Row, args: argparse.Namespace, work: Path, ports: dict[str, int]
) -> Iterator[tuple[int, bench.Process | None, bench.Process]]:
    listener, grpc_port, http_port = bench.free_port(), bench.free_port(), bench.free_port()
    document = row.document.format(listener=listener)
    instances = bench.INSTANCES.format(perl=ports["perl"], go=ports["go"])
    config_path, instances_path = work / "config.yaml", work / "instances.yaml"
    config_path.write_text(document)
    instances_path.write_text(instances)
    lua = (bench.ROOT / "envoy" / "pin.lua").read_text() if row.lua else None
    server_row = bench.Row(row.name, "http", "junction" if row.service else None)
    with bench.decision_server(
        server_row, work, config_path, instances_path, grpc_port, http_port, args.workers
    ) as server:
        envoy = bench.run_envoy(
            bench.envoy_config(document, instances, grpc_port, http_port, lua), work, "envoy"
        )
        try:
            bench.wait_port(listener)
            if row.pinned and row is not ROWS[0]:  # decides for real: a pin lands on go
                body = get(listener, {"Host": "example.com", "x-junction-version": "go"})
                if body != "go\n":
                    raise RuntimeError(f"{row.name}: a pinned request reached {body!r}")
            if not row.pinned:  # a key decides for real: the same side every time
                sides = {get(listener, {"Host": "example.com", "x-user-id": "k1"}) for _ in "xyz"}
                if len(sides) != 1:
                    raise RuntimeError(f"{row.name}: one key reached {sides}")
            bench.wrk(listener, 1, args.connections, headers(row), script(row))  # warm-up
            yield listener, server, envoy
        finally:
            envoy.stop()


def headers(row: Row) -> dict[str, str]:
    return {"Host": "example.com", **({"x-junction-version": "go"} if row.pinned else {})}


def script(row: Row) -> Path | None:
    return None if row.pinned else HERE / "canary.lua"


def peak(row: Row, args: argparse.Namespace, work: Path, ports: dict[str, int]) -> bench.Result:
    with running(row, args, work, ports) as (listener, server, envoy):
        before = (bench.cpu_seconds(server.pids) if server else 0.0, bench.cpu_seconds(envoy.pids))
        result = bench.wrk(listener, args.duration, args.connections, headers(row), script(row))
        after = (bench.cpu_seconds(server.pids) if server else 0.0, bench.cpu_seconds(envoy.pids))
    result.server_cpu = (after[0] - before[0]) / result.requests
    result.envoy_cpu = (after[1] - before[1]) / result.requests
    return result


def render(runs: dict[str, list[bench.Result]], args: argparse.Namespace, command: str) -> str:
    plain_runs = runs[ROWS[0].name]
    lines = [
        START,
        "## Native decisions: pins and the sticky canary in Envoy's routes",
        "",
        f"Machine: {os.cpu_count()} cores, **shared and loaded** (load average at start / end "
        f"{args.load[0]:.2f} / {args.load[1]:.2f}); Envoy `--concurrency 1`; decision service "
        f"{args.workers} worker(s), http_service transport; wrk `-t1 -c{args.connections} "
        f"-d{args.duration:g}s`; each row its own Envoy, one upstream (a second Envoy, "
        f"`direct_response`). {args.repeat} rounds, rows interleaved in each round. req/s: the "
        "median run; vs plain: the median over rounds of (row / plain routes of the same "
        "round). CPU per request: utime+stime from `/proc/<pid>/stat` over the run / its "
        "requests (service: every process of it; it runs for every row with decisions).",
        "",
        "| path | req/s (median) | vs plain (median of rounds) | p50 ms | p99 ms "
        "| Envoy CPU µs/req | service CPU µs/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        rs = runs[row.name]
        mid = sorted(rs, key=lambda r: r.rps)[len(rs) // 2]
        ratio = statistics.median(r.rps / p.rps for r, p in zip(rs, plain_runs, strict=True))
        service = f"{statistics.median(r.server_cpu for r in rs) * 1e6:.1f}" if row.service else "-"
        lines.append(
            f"| {row.name} | {mid.rps:,.0f} | {ratio:.2f} | {mid.p50_ms:.2f} | {mid.p99_ms:.2f} "
            f"| {statistics.median(r.envoy_cpu for r in rs) * 1e6:.0f} | {service} |"
        )
    lines += [
        "",
        "Reproduce (wrk from `apt-get install -y wrk`):",
        "",
        "```sh",
        command,
        "```",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="decision service workers")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (rows interleaved)")
    parser.add_argument("--out", type=Path, help="write the section into this markdown file")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    start_load = os.getloadavg()[0]
    runs: dict[str, list[bench.Result]] = {row.name: [] for row in ROWS}
    with tempfile.TemporaryDirectory(prefix="junction-native-bench-") as tmp:
        work = Path(tmp)
        ports = {"perl": bench.free_port(), "go": bench.free_port()}
        upstream = bench.run_envoy(bench.upstream_config(ports["perl"], ports["go"]), work, "up")
        try:
            bench.wait_port(ports["perl"])
            bench.wait_port(ports["go"])
            for _ in range(args.repeat):
                for row in ROWS:
                    r = peak(row, args, work, ports)
                    runs[row.name].append(r)
                    print(
                        f"{row.name}: {r.rps:,.0f} req/s, Envoy {r.envoy_cpu * 1e6:.0f} µs, "
                        f"service {r.server_cpu * 1e6:.1f} µs",
                        flush=True,
                    )
        finally:
            upstream.stop()
    args.load = (start_load, os.getloadavg()[0])
    command = " ".join(
        [".venv/bin/python loadtest/extproc/native_bench.py", *(argv or sys.argv[1:])]
    )
    section = render(runs, args, command)
    print(section)
    if args.out:
        text = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
        if START in text and END in text:
            text = text.split(START)[0] + section.rstrip("\n") + text.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
