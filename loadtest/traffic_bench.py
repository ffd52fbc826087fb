#!/usr/bin/env python3
"""Traffic-controls benchmark (issue 14): how fast a drain reaches Envoy, and what the
egress listener costs per request next to ingress.

Runs the real stack: demo upstreams (examples/upstream.py), ``junction up`` (control
plane, decision service, a real Envoy) as a child process, all on free loopback ports.

- **Drain -> Envoy**: from just before ``POST /drain/SERVICE/INSTANCE`` to the moment
  Envoy's admin ``/clusters`` shows the host ``DRAINING`` (polled every 5 ms), and the
  same for ``DELETE`` back to ``HEALTHY``; operations 300 ms apart (beyond the
  publisher's 100 ms between pushes); ``--cycles`` of each, for each store: the
  state directory (files, polled every 0.2 s) and Consul KV (blocking query; Consul is
  the test double tests/consul_double.py, in this process, speaking Consul's HTTP API).
- **Egress vs ingress**: sequential GETs (one connection, keep-alive), ``--requests``
  of each kind, interleaved in rounds so load changes hit all kinds alike:
  ingress on a route without decisions (``/asset``, the baseline), ingress pinned
  (``/api`` with ``x-junction-version: go``: one decision-service call), egress pinned
  (``Host: web-feed`` with ``x-junction-version: go``: a native header match). Ratios to
  the baseline are the figures to read; absolute ones move with the machine's load.

    .venv/bin/python loadtest/traffic_bench.py --cycles 30 --requests 2000 --out docs/benchmarks.md

writes its section of ``docs/benchmarks.md`` (between ``<!-- traffic-bench:start -->``
and ``<!-- traffic-bench:end -->``; the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Consul test double

CONFIG = """\
listener:
  listen: {{address: 127.0.0.1, port: {listener}}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {{prefix: [/api], weight: 100}}
    web-api-go:   {{prefix: [/api], weight: 0}}
    web-asset:    {{prefix: [/asset]}}
cluster:
  loadbalancer:
    web-feed-perl: {{}}
    web-feed-go: {{}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{header: x-junction-version, trust: any}}
  web-feed:
    default: perl
    clusters: {{perl: web-feed-perl, go: web-feed-go}}
egress:
  listen: {{address: 127.0.0.1, port: {egress}}}
  services: [web-feed]
"""
#: Seconds between drain operations (beyond the publisher's min_interval of 0.1 s).
SPACING = 0.3
SERVICES = ("web-api-perl", "web-api-go", "web-asset", "web-feed-perl", "web-feed-go")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.05)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def stack(store: str, tmp: Path) -> AsyncIterator[dict[str, Any]]:
    """Upstreams + ``junction up`` with drains in ``store`` ("file" or "consul")."""
    ports = {name: free_port() for name in SERVICES}
    ports["extra"] = free_port()  # a second web-asset instance: the one we drain
    listener, egress, http = free_port(), free_port(), free_port()
    config = CONFIG.format(listener=listener, egress=egress)
    instances = tmp / "instances.yaml"
    instances.write_text(
        "services:\n"
        + "".join(f"  {n}: [{{address: 127.0.0.1, port: {ports[n]}}}]\n" for n in SERVICES[:2])
        + f"  web-asset: [{{address: 127.0.0.1, port: {ports['web-asset']}}}, "
        f"{{address: 127.0.0.1, port: {ports['extra']}}}]\n"
        + "".join(f"  {n}: [{{address: 127.0.0.1, port: {ports[n]}}}]\n" for n in SERVICES[3:])
    )
    specs = [f"{n}:{p}" for n, p in ports.items() if n != "extra"]
    specs.append(f"web-asset:{ports['extra']}")
    up = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "upstream.py"), *specs,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with contextlib.AsyncExitStack() as exits:
        exits.push_async_callback(stop, up)
        args = ["--http-port", str(http), "--xds-port", "0", "--envoy-admin-port", "0",
                "--extproc-workers", "1", "--node-id", f"bench-{os.getpid()}-{http}",
                "--instances", str(instances)]  # fmt: skip
        if store == "consul":
            from consul_double import ConsulDouble

            double = await exits.enter_async_context(ConsulDouble())
            double.put_kv("junction/config", config)
            args += ["--consul-addr", double.address, "--consul-key", "junction/config"]
        else:
            (tmp / "config.yaml").write_text(config)
            args += ["-c", str(tmp / "config.yaml"), "--state-dir", str(tmp / "state")]
        log = (tmp / f"junction-{store}.log").open("wb")
        exits.callback(log.close)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "junction", "--log-level", "warning", "up", *args,
            cwd=ROOT, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        exits.push_async_callback(stop, proc)
        for port in (*ports.values(), http, listener, egress):
            await wait_port(port, 60)
        session = await exits.enter_async_context(aiohttp.ClientSession())
        admin = None
        while admin is None:
            async with session.get(f"http://127.0.0.1:{http}/status") as resp:
                admin = (await resp.json())["envoy_admin"]
            await asyncio.sleep(0.1)
        yield {"ports": ports, "listener": listener, "egress": egress, "http": http,
               "admin": admin, "session": session}  # fmt: skip


async def host_status(s: dict[str, Any], port: int) -> str | None:
    async with s["session"].get(f"http://{s['admin']}/clusters?format=json") as resp:
        clusters = await resp.json(content_type=None)
    for cluster in clusters["cluster_statuses"]:
        for host in cluster.get("host_statuses", []):
            if host["address"]["socket_address"]["port_value"] == port:
                return str(host["health_status"].get("eds_health_status", "HEALTHY"))
    return None


async def until_status(s: dict[str, Any], port: int, want: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while await host_status(s, port) != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"host {port} never became {want}")
        await asyncio.sleep(0.005)


async def drain_cycles(s: dict[str, Any], cycles: int) -> dict[str, list[float]]:
    port = s["ports"]["extra"]
    url = f"http://127.0.0.1:{s['http']}/drain/web-asset/127.0.0.1%3A{port}"
    await until_status(s, port, "HEALTHY")
    out: dict[str, list[float]] = {"drain": [], "undrain": []}
    for _ in range(cycles):
        # Spaced beyond the publisher's 100 ms min_interval, which would otherwise add
        # its wait (coalescing by design) to back-to-back changes.
        await asyncio.sleep(SPACING)
        t0 = time.perf_counter()
        async with s["session"].post(url, json={"reason": "bench"}) as resp:
            assert resp.status == 200, await resp.text()
        await until_status(s, port, "DRAINING")
        out["drain"].append(time.perf_counter() - t0)
        await asyncio.sleep(SPACING)
        t0 = time.perf_counter()
        async with s["session"].delete(url) as resp:
            assert resp.status == 200, await resp.text()
        await until_status(s, port, "HEALTHY")
        out["undrain"].append(time.perf_counter() - t0)
    return out


async def latencies(s: dict[str, Any], requests: int) -> dict[str, list[float]]:
    kinds = {
        "ingress, no decision (/asset)": (s["listener"], "/asset/x", "example.com", {}),
        "ingress, pinned (/api, ext_proc)": (
            s["listener"], "/api/x", "example.com", {"x-junction-version": "go"}),
        "egress, pinned (native match)": (
            s["egress"], "/x", "web-feed", {"x-junction-version": "go"}),
    }  # fmt: skip
    expect = {
        "ingress, no decision (/asset)": "web-asset",
        "ingress, pinned (/api, ext_proc)": "web-api-go",
        "egress, pinned (native match)": "web-feed-go",
    }
    out: dict[str, list[float]] = {k: [] for k in kinds}
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as session:
        # Warm up, and wait until the decision service answers (it fails open meanwhile).
        deadline = time.monotonic() + 60
        for kind, (port, path, host, headers) in kinds.items():
            while True:
                async with session.get(
                    f"http://127.0.0.1:{port}{path}", headers={"Host": host, **headers}
                ) as resp:
                    await resp.read()
                    if resp.headers.get("x-upstream-service") == expect[kind]:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind}: never reached {expect[kind]}")
                await asyncio.sleep(0.1)
        rounds, per_round = max(1, requests // 100), min(100, requests)
        for _ in range(rounds):
            for kind, (port, path, host, headers) in kinds.items():
                url = f"http://127.0.0.1:{port}{path}"
                send = {"Host": host, **headers}
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    async with session.get(url, headers=send) as resp:
                        await resp.read()
                    out[kind].append(time.perf_counter() - t0)
                    assert resp.headers.get("x-upstream-service") == expect[kind]
    return out


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def report(args: argparse.Namespace, drains: dict[str, dict[str, list[float]]],
           lat: dict[str, list[float]]) -> str:  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "## Traffic controls: drains and egress (issue 14)",
        "",
        "Reproduce (from the repository root; about a minute):",
        "",
        "```",
        f".venv/bin/python loadtest/traffic_bench.py --cycles {args.cycles} "
        f"--requests {args.requests} --out docs/benchmarks.md",
        "```",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average at start {load}. Measured "
        f"{time.strftime('%Y-%m-%d')}. The machine is shared: absolute figures are noisy; "
        "the ratios, measured in the same run and interleaved, are the sturdier numbers.",
        "",
        "### Drain -> Envoy",
        "",
        "From just before the API call to Envoy's admin showing the host `DRAINING` "
        "(`HEALTHY` again for undrain), polled every 5 ms; "
        f"{args.cycles} cycles per store, one `junction up` each; operations "
        f"{SPACING * 1000:.0f} ms apart (beyond the publisher's 100 ms between pushes).",
        "",
        "| store | drain median ms | p90 | max | undrain median ms | p90 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for store, d in drains.items():
        lines.append(
            f"| {store} | {ms(statistics.median(d['drain']))} | {ms(pct(d['drain'], 90))} | "
            f"{ms(max(d['drain']))} | {ms(statistics.median(d['undrain']))} | "
            f"{ms(pct(d['undrain'], 90))} | {ms(max(d['undrain']))} |"
        )
    return "\n".join(lines + latency_lines(args, lat))


def latency_lines(args: argparse.Namespace, lat: dict[str, list[float]]) -> list[str]:
    base = statistics.median(lat["ingress, no decision (/asset)"])
    lines = [
        "",
        "Both include the publisher's 20 ms settle window and the push to Envoy. The "
        "state directory is polled every 0.2 s (so about 100 ms of its figures is the "
        "poll); Consul is watched with a blocking query (here the Consul test double, "
        "in the benchmark's process).",
        "",
        "### Egress vs ingress, per request",
        "",
        f"Sequential GETs on one keep-alive connection, {args.requests} of each kind, "
        "interleaved in rounds of 100; the demo upstream answers at once.",
        "",
        "| kind | median ms | p99 ms | median / baseline |",
        "|---|---|---|---|",
    ]
    for kind, values in lat.items():
        lines.append(
            f"| {kind} | {ms(statistics.median(values))} | {ms(pct(values, 99))} | "
            f"{statistics.median(values) / base:.2f} |"
        )
    lines += [
        "",
        "Egress routes on a native header match, so a pinned outbound call costs what a "
        "plain route costs; a pinned ingress request pays for the decision-service call.",
        "",
    ]
    return lines


async def main_async(args: argparse.Namespace) -> str:
    drains: dict[str, dict[str, list[float]]] = {}
    lat: dict[str, list[float]] = {}
    for store in ("file", "consul"):
        with tempfile.TemporaryDirectory(prefix="junction-traffic-bench-") as tmp:
            async with stack(store, Path(tmp)) as s:
                drains[store] = await drain_cycles(s, args.cycles)
                if store == "file":
                    lat = await latencies(s, args.requests)
    return report(args, drains, lat)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--out", help="docs/benchmarks.md: replace this benchmark's section")
    args = p.parse_args(argv)
    text = asyncio.run(main_async(args))
    print(text)
    if args.out:
        path = Path(args.out)
        doc = path.read_text() if path.exists() else ""
        block = f"<!-- traffic-bench:start -->\n{text}<!-- traffic-bench:end -->\n"
        pattern = re.compile(r"<!-- traffic-bench:start -->.*?<!-- traffic-bench:end -->\n", re.S)
        doc = pattern.sub(lambda _: block, doc) if pattern.search(doc) else doc + "\n" + block
        path.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
