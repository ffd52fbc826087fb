#!/usr/bin/env python3
"""ext_proc benchmark (issues 3 and 6): the same pin decision made six ways, side by side in
one run, on one machine, with one load generator and one upstream.

Rows:

- plain routes: Envoy's weighted route, no decision at all (the floor of the proxy);
- Lua: ``envoy/pin.lua`` in Envoy (the in-proxy fast path);
- ext_proc gRPC, grpc.aio floor: a servicer that parses nothing and answers a constant
  (``floor.py``): what the grpc.aio stack itself costs;
- ext_proc gRPC, Junction: ``junction extproc serve`` on the gRPC transport;
- ext_proc gRPC, betterproto2 + grpclib peer (``peer.py``): what a user would write from
  the docs;
- ext_proc http_service, Junction: ``junction extproc serve`` on Envoy's HTTP transport;
- and, with ``--canary``, Junction on both transports deciding by sticky canary bucket
  (a fresh ``x-user-id`` per request, no pin) -- the full decision path rather than the
  pin shortcut.

Every Envoy config is Junction's own translation of one config document (rendered
static, as ``junction validate --envoy`` does), with ``decision.transport`` set per row;
the Lua row swaps the ext_proc filter for the Lua filter. The upstream is a second Envoy
answering from ``direct_response`` (its CPU is not counted). Before measuring, each row
is checked to route a pinned request to the pinned version (a silently failing-open
decision service would otherwise look fast).

Each row: ``wrk -t1 -c32 -d<duration>s --latency`` for the peak (requests/s, p50, p99; the
median of ``--repeat`` runs, rows interleaved round by round so that other load on the
machine spreads over every row),
CPU per request of the decision server (all its processes) and of the Envoy under test
(``/proc/<pid>/stat`` utime+stime over the run, divided by the requests), then a paced
run at half of that row's peak (``paced.lua``: wrk's per-connection ``delay()``) for the
latency a decision adds at moderate load: p99 of the row minus p99 of plain routes paced
at the same rate.

Needs: wrk (``apt-get install -y wrk``) and the bench extra (``pip install -e
'.[bench]'``: envoy-data-plane, betterproto2, grpclib for the peer).

    .venv/bin/python loadtest/extproc/bench.py --duration 5 --repeat 3 --workers 1 --canary \\
        --out docs/benchmarks.md

writes its section of ``docs/benchmarks.md`` (between ``<!-- extproc-bench:start -->`` and
``<!-- extproc-bench:end -->``; the rest of the file is kept). Timings are this machine's;
the ratios between rows are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from junction.catalog.file import load_instances
from junction.catalog.model import Catalog
from junction.config.load import load_config
from junction.envoy_process import envoy_binary
from junction.xds.bootstrap import BootstrapOptions, bootstrap
from junction.xds.names import ALS_CLUSTER, XDS_CLUSTER
from junction.xds.translate import translate
from junction.xds.translate_extproc import EXTPROC_FILTER
from junction.xds.validate import static_bootstrap

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
listener:
  listen: {{protocol: tcp, address: 127.0.0.1, port: {listener}}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {{prefix: ["/api"], weight: 90}}
    web-api-go:   {{prefix: ["/api"], weight: 10}}
    web-asset:    {{prefix: ["/asset"], weight: 100}}
cluster: {{loadbalancer: {{web-api-perl: {{}}, web-api-go: {{}}, web-asset: {{}}}}}}
"""
DECISIONS = """\
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{trust: any}}
    canary: {{version: go, weight: 10, key: {{header: x-user-id}}}}
experiments:
  feed:
    service: web-api
    match: {{prefix: /api/feed}}
    key: {{header: x-user-id}}
    arms: {{control: {{weight: 50}}, treatment: {{weight: 50, version: go}}}}
decision: {{transport: {transport}, timeout: 1}}
"""
INSTANCES = """\
services:
  web-api-perl: [{{address: 127.0.0.1, port: {perl}}}]
  web-api-go: [{{address: 127.0.0.1, port: {go}}}]
  web-asset: [{{address: 127.0.0.1, port: {perl}}}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (all threads), seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@dataclass
class Process:
    """A child process, stopped by :meth:`stop`; ``extra_pids`` are counted for CPU too."""

    popen: subprocess.Popen[bytes]
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [self.popen.pid, *self.extra_pids]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(args: Sequence[str], log: Path) -> Process:
    with log.open("ab") as out:
        return Process(subprocess.Popen(args, stdout=out, stderr=out, cwd=ROOT))


def run_envoy(config: dict[str, Any], work: Path, name: str) -> Process:
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))
    return start(
        [envoy_binary(), "-c", str(path), "--concurrency", "1", "--use-dynamic-base-id",
         "-l", "error", "--log-path", str(work / f"{name}.log")],
        work / f"{name}.out",
    )  # fmt: skip


def upstream_config(perl: int, go: int) -> dict[str, Any]:
    def listener(name: str, port: int) -> dict[str, Any]:
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": name,
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "direct_response": {
                                    "status": 200,
                                    "body": {"inline_string": f"{name}\n"},
                                },
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        }
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        }

    return {"static_resources": {"listeners": [listener("perl", perl), listener("go", go)]}}


def envoy_config(
    document: str, instances: str, grpc_port: int, http_port: int, lua: str | None
) -> dict[str, Any]:
    """Junction's translation of ``document``, static, with the ext_proc clusters."""
    config = load_config(document, "bench")
    snapshot = translate(config, Catalog(load_instances(instances, "bench")))
    doc: dict[str, Any] = json_format.MessageToDict(static_bootstrap(snapshot))
    boot = bootstrap(
        BootstrapOptions(
            node_id="bench", xds_port=1, admin_port=0, extproc_port=grpc_port,
            extproc_http_port=http_port,
        )
    )  # fmt: skip
    doc["staticResources"]["clusters"] += [
        c
        for c in boot["staticResources"]["clusters"]
        if c["name"] not in (XDS_CLUSTER, ALS_CLUSTER)
    ]
    doc["admin"] = boot["admin"]
    if lua is not None:
        hcm = doc["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
        hcm["httpFilters"] = [
            {
                "name": "envoy.filters.http.lua",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "defaultSourceCode": {"inlineString": lua},
                },
            }
            if f["name"] == EXTPROC_FILTER
            else f
            for f in hcm["httpFilters"]
        ]
    return doc


@dataclass
class Row:
    name: str
    transport: str | None  # None: no decision service
    server: str | None  # "junction", "floor", "peer", None
    lua: bool = False
    canary: bool = False


ROWS = [
    Row("plain routes (no decision)", None, None),
    Row("Lua filter (envoy/pin.lua)", "grpc", None, lua=True),
    Row("ext_proc gRPC: grpc.aio floor (parses nothing)", "grpc", "floor"),
    Row("ext_proc gRPC: Junction", "grpc", "junction"),
    Row("ext_proc gRPC: betterproto2 + grpclib peer", "grpc", "peer"),
    Row("ext_proc http_service: Junction", "http", "junction"),
]
CANARY_ROWS = [
    Row("ext_proc gRPC: Junction, canary buckets", "grpc", "junction", canary=True),
    Row("ext_proc http_service: Junction, canary buckets", "http", "junction", canary=True),
]


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    server_cpu: float = 0.0
    envoy_cpu: float = 0.0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(
    port: int,
    duration: float,
    connections: int,
    headers: dict[str, str],
    script: Path | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(f"http://127.0.0.1:{port}/api/x")
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    )
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return Result(rps, p50, p99, requests)


def fetch(port: int, headers: dict[str, str]) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/x", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


@contextlib.contextmanager
def decision_server(
    row: Row,
    work: Path,
    config_path: Path,
    instances_path: Path,
    grpc_port: int,
    http_port: int,
    workers: int,
) -> Iterator[Process | None]:
    log = work / "server.log"
    proc: Process | None = None
    if row.server == "floor":
        proc = start([PYTHON, str(HERE / "floor.py"), "--port", str(grpc_port)], log)
        wait_port(grpc_port)
    elif row.server == "peer":
        proc = start([PYTHON, str(HERE / "peer.py"), "--port", str(grpc_port)], log)
        wait_port(grpc_port)
    elif row.server == "junction":
        stats = free_port()
        proc = start(
            [PYTHON, "-m", "junction", "--log-level", "warning", "extproc", "serve",
             "-c", str(config_path), "--instances", str(instances_path),
             "--workers", str(workers), "--stats-port", str(stats),
             "--http-port", str(http_port) if row.transport == "http" else "off",
             "--grpc-port", str(grpc_port) if row.transport == "grpc" else "off"],
            log,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{stats}/stats", timeout=2) as r:
                    status = json.loads(r.read())
                if status["ready"] and len(status["workers"]) == workers:
                    proc.extra_pids = [w["pid"] for w in status["workers"]]
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"decision service not ready; see {log}")
            time.sleep(0.1)
    try:
        yield proc
    finally:
        if proc is not None:
            proc.stop()


@contextlib.contextmanager
def running(
    row: Row, args: argparse.Namespace, work: Path, ports: dict[str, int]
) -> Iterator[tuple[int, Process | None, Process, dict[str, str]]]:
    """Envoy (and the row's decision server) up, checked to decide for real; yields the
    listener port, the server, Envoy and the headers wrk sends."""
    listener, grpc_port, http_port = free_port(), free_port(), free_port()
    document = CONFIG.format(listener=listener)
    if row.transport is not None:
        document += DECISIONS.format(transport=row.transport)
    instances = INSTANCES.format(perl=ports["perl"], go=ports["go"])
    config_path, instances_path = work / "config.yaml", work / "instances.yaml"
    config_path.write_text(document)
    instances_path.write_text(instances)
    lua = (ROOT / "envoy" / "pin.lua").read_text() if row.lua else None
    headers = {"Host": "example.com"}
    if not row.canary:
        headers["x-junction-version"] = "go"
    with decision_server(
        row, work, config_path, instances_path, grpc_port, http_port, args.workers
    ) as server:
        envoy = run_envoy(
            envoy_config(document, instances, grpc_port, http_port, lua), work, "envoy"
        )
        try:
            wait_port(listener)
            # Decides for real: a pinned request lands on the pinned version.
            answer = fetch(listener, {"Host": "example.com", "x-junction-version": "go"})
            if row.transport is not None and answer != "go\n":
                raise RuntimeError(f"{row.name}: a pinned request reached {answer!r}")
            wrk(listener, 1, args.connections, headers, _script(row))  # warm-up
            yield listener, server, envoy, headers
        finally:
            envoy.stop()


def _script(row: Row) -> Path | None:
    return HERE / "canary.lua" if row.canary else None


def peak_run(row: Row, args: argparse.Namespace, work: Path, ports: dict[str, int]) -> Result:
    """Unpaced wrk: requests/s, latency, and CPU per request of the server and Envoy."""
    with running(row, args, work, ports) as (listener, server, envoy, headers):
        before = (cpu_seconds(server.pids) if server else 0.0, cpu_seconds(envoy.pids))
        peak = wrk(listener, args.duration, args.connections, headers, _script(row))
        after = (cpu_seconds(server.pids) if server else 0.0, cpu_seconds(envoy.pids))
    peak.server_cpu = (after[0] - before[0]) / peak.requests
    peak.envoy_cpu = (after[1] - before[1]) / peak.requests
    return peak


def half_run(
    row: Row, args: argparse.Namespace, work: Path, ports: dict[str, int], rate: float
) -> Result:
    """wrk paced at ``rate`` requests/s."""
    with running(row, args, work, ports) as (listener, _, _, headers):
        return paced(listener, rate, args.duration, headers, row.canary)


def paced(port: int, rate: float, duration: float, headers: dict[str, str], canary: bool) -> Result:
    """wrk at about ``rate`` requests/s: each connection sleeps ``delay()`` between requests."""
    connections = max(4, round(rate * 0.005))  # ~5 ms per request per connection
    delay_ms = max(1, round(connections / rate * 1000 - 1))
    env = {"JUNCTION_PACE_MS": str(delay_ms), "JUNCTION_CANARY": "1" if canary else ""}
    return wrk(port, duration, connections, headers, HERE / "paced.lua", env)


def render(
    rows: list[tuple[Row, Result, Result]],
    plain_at: dict[str, Result],
    args: argparse.Namespace,
    command: str,
) -> str:
    lua = next(r for row, r, _ in rows if row.lua)
    floor = next((r for row, r, _ in rows if row.server == "floor"), None)
    lines = [
        "<!-- extproc-bench:start -->",
        "## ext_proc: the decision service against Lua, plain routes and a betterproto2 peer",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Envoy `--concurrency 1`, decision service {args.workers} worker(s), "
        f"wrk `-t1 -c{args.connections} -d{args.duration:g}s`; each row its own Envoy and "
        "server, the same upstream (a second Envoy, `direct_response`). Peak: unpaced wrk, the "
        f"median of {args.repeat} runs per row, rows interleaved round by round. "
        f"Load average (1 min) at start and end: {args.load[0]:.2f} / {args.load[1]:.2f} "
        "(anything above ~1 is other work sharing the cores: latencies are then noisy). "
        "CPU per request: utime+stime from `/proc/<pid>/stat` over the peak run, divided by "
        "its requests (server: every process of it). Added p99: the row's p99 minus plain "
        "routes' p99, both paced at half of the row's peak.",
        "",
        "| path | req/s | vs Lua | p50 ms | p99 ms | server CPU µs/req | Envoy CPU µs/req "
        "| half-peak req/s | p99 ms | added p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, peak, half in rows:
        base = plain_at.get(row.name)
        added = f"{half.p99_ms - base.p99_ms:+.2f}" if base is not None else "-"
        server = f"{peak.server_cpu * 1e6:.0f}" if row.server else "-"
        lines.append(
            f"| {row.name} | {peak.rps:,.0f} | {peak.rps / lua.rps:.2f} | {peak.p50_ms:.2f} | "
            f"{peak.p99_ms:.2f} | {server} | {peak.envoy_cpu * 1e6:.0f} | {half.rps:,.0f} | "
            f"{half.p99_ms:.2f} | {added} |"
        )
    lines += ["", "Ratios (the result; absolute figures are this machine's):", ""]
    by = {row.name: peak for row, peak, _ in rows}
    http = by.get("ext_proc http_service: Junction")
    grpc_ = by.get("ext_proc gRPC: Junction")
    peer = by.get("ext_proc gRPC: betterproto2 + grpclib peer")
    if http:
        lines.append(f"- http_service / Lua throughput: {http.rps / lua.rps:.2f} (goal ≥ 0.5)")
        lines.append(
            f"- http_service server CPU per decision: {http.server_cpu * 1e6:.0f} µs (goal ≤ 30)"
        )
    if grpc_:
        lines.append(f"- gRPC / Lua throughput: {grpc_.rps / lua.rps:.2f} (goal ≥ 0.25)")
        if floor:
            ratio = grpc_.server_cpu / floor.server_cpu
            lines.append(f"- gRPC server CPU vs the grpc.aio floor: {ratio:.2f}x (goal ≤ 1.2x)")
    if peer and (http or grpc_):
        best = max(r.rps for r in (http, grpc_) if r)
        lines.append(
            f"- best Junction transport / betterproto2 peer throughput: {best / peer.rps:.1f}x "
            "(goal ≥ 5x)"
        )
    lines += ["", "Reproduce (wrk from `apt-get install -y wrk`, peer from the `bench` extra):", "",
              "```sh", command, "```", "<!-- extproc-bench:end -->"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = "<!-- extproc-bench:start -->", "<!-- extproc-bench:end -->"
    if start in text and end in text:
        text = text.split(start)[0] + section.rstrip("\n") + text.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="decision service workers")
    parser.add_argument("--canary", action="store_true", help="also the canary-bucket rows")
    parser.add_argument("--repeat", type=int, default=3, help="peak runs per row (median kept)")
    parser.add_argument("--only", nargs="*", help="run only rows whose name contains one of these")
    parser.add_argument("--out", type=Path, help="write the section into this markdown file")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    rows = ROWS + (CANARY_ROWS if args.canary else [])
    if args.only:
        rows = [
            r for r in rows if r.lua or r.transport is None or any(o in r.name for o in args.only)
        ]
    start_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="junction-extproc-bench-") as tmp:
        work = Path(tmp)
        ports = {"perl": free_port(), "go": free_port()}
        upstream = run_envoy(upstream_config(ports["perl"], ports["go"]), work, "upstream")
        try:
            wait_port(ports["perl"])
            wait_port(ports["go"])
            # Rounds, rows interleaved: noise from other load on the machine spreads over
            # every row instead of sinking one; each row's median-throughput run is kept.
            runs: dict[str, list[Result]] = {row.name: [] for row in rows}
            for _ in range(args.repeat):
                for row in rows:
                    result = peak_run(row, args, work, ports)
                    runs[row.name].append(result)
                    print(
                        f"{row.name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                        f"p99 {result.p99_ms:.2f} ms, server {result.server_cpu * 1e6:.0f} µs, "
                        f"Envoy {result.envoy_cpu * 1e6:.0f} µs",
                        flush=True,
                    )
            results = []
            plain_at: dict[str, Result] = {}
            for row in rows:
                peak = sorted(runs[row.name], key=lambda r: r.rps)[len(runs[row.name]) // 2]
                half = half_run(row, args, work, ports, peak.rps / 2)
                results.append((row, peak, half))
                if row.transport is not None:
                    plain_at[row.name] = half_run(ROWS[0], args, work, ports, half.rps)
                print(f"{row.name}: half peak {half.rps:,.0f} req/s, p99 {half.p99_ms:.2f} ms")
        finally:
            upstream.stop()
    args.load = (start_load, os.getloadavg()[0])
    command = " ".join([".venv/bin/python loadtest/extproc/bench.py", *(argv or sys.argv[1:])])
    section = render(results, plain_at, args, command)
    print(section)
    if args.out:
        write_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
