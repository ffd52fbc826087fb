"""ALS ingest with Envoy's own buffered gRPC access logging as the source.

    .venv/bin/python loadtest/als/bench_envoy.py [--duration 10] [--rate 20000] \
        [--out docs/benchmarks.md]

Needs wrk (``apt-get install -y wrk``). On this 2-core machine:

- the receiver (junction.als, windows + JSON-lines file sink) runs pinned to CPU 0, started
  by ``bench_ingest.py --role receiver``;
- Envoy (``--concurrency 1``) and wrk (``-t1``) share CPU 1. Envoy's listener answers from a
  ``direct_response`` route (no upstream to spend CPU on) and logs every request with
  exactly the HCM access logger Junction configures
  (:func:`junction.xds.translate_als.access_logger`:
  ``envoy.access_loggers.http_grpc``, buffer 16 KiB, flush 1 s), to the static cluster
  ``junction_als``; wrk sends the decision header, so it is logged like in production.

Runs: wrk unpaced (the peak this setup reaches), then paced at ``--rate`` requests/s
(``paced.lua``: each connection waits 2 ms between requests; the number of connections
sets the rate). For each run, after
Envoy's last flush: requests Envoy served, entries Envoy logged (``logs_written``), entries
it dropped (``logs_dropped``) or failed to send (``grpc_entries_flush_failed``), entries the
receiver took and processed, and what it dropped (queue, sink). Zero drops means every
request Envoy served became a processed record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from junction.envoy_process import envoy_binary  # noqa: E402
from junction.xds.names import ALS_CLUSTER  # noqa: E402
from junction.xds.translate_als import AccessLogOptions, access_logger  # noqa: E402

CONNECTIONS = 32
_TYPES = "type.googleapis.com/envoy.extensions."
HCM_TYPE = _TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = _TYPES + "filters.http.router.v3.Router"
HTTP_OPTIONS_TYPE = _TYPES + "upstreams.http.v3.HttpProtocolOptions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def affinity(cpu: int | None) -> Any:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def envoy_config(listener: int, admin: int, als: int, flush: float, buffer: int) -> dict[str, Any]:
    logger = json_format.MessageToDict(
        access_logger(AccessLogOptions(flush_interval=flush, buffer_size_bytes=buffer)),
        preserving_proto_field_name=True,
    )
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM_TYPE,
                                        "stat_prefix": "bench",
                                        "access_log": [logger],
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "name": "/api",
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": "ok\n"},
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER_TYPE},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": ALS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": HTTP_OPTIONS_TYPE,
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": ALS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": als,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


class Receiver:
    """``bench_ingest.py --role receiver`` with a thread keeping its latest counters."""

    def __init__(self, cpu: int | None, sink: str | None) -> None:
        args = [sys.executable, str(HERE / "bench_ingest.py"), "--role", "receiver"]
        args += ["--cpu", str(cpu if cpu is not None else 99)]
        if sink:
            args += ["--sink", sink]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])
        self.latest: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.latest = json.loads(line)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def envoy_stats(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?format=json", timeout=5) as r:
        data = json.loads(r.read())
    return {s["name"]: s["value"] for s in data["stats"] if isinstance(s.get("value"), int)}


@contextlib.contextmanager
def running_envoy(
    config: dict[str, Any], cpu: int | None, work: Path
) -> Iterator[subprocess.Popen[bytes]]:
    path = work / "envoy.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(path), "--concurrency", "1", "--use-dynamic-base-id",
         "--log-level", "warning", "--log-path", str(work / "envoy.log")],
        preexec_fn=affinity(cpu),
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def wait_http(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).read()
            return
        time.sleep(0.05)
    raise RuntimeError("Envoy did not start")


def wrk(
    port: int, duration: float, cpu: int | None, delay_ms: int = 0, connections: int = CONNECTIONS
) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
           "-H", "x-junction-decision: canary=go", "-H", "x-junction-version: go"]  # fmt: skip
    env = dict(os.environ)
    if delay_ms:
        cmd += ["-s", str(HERE / "paced.lua")]
        env["WRK_DELAY_MS"] = str(delay_ms)
    cmd.append(f"http://127.0.0.1:{port}/api/items/42")
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, preexec_fn=affinity(cpu), check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "connections": connections}


def calibrate(port: int, cpu: int | None, rate: float) -> int:
    """Connections for about ``rate`` requests/s. wrk's ``delay()`` has whole-millisecond
    steps, so the rate is set by the number of connections (each waits 2 ms on average
    between requests): two short runs measure what a connection achieves here."""
    connections = 16
    for _ in range(2):
        probe = wrk(port, 1.0, cpu, delay_ms=2, connections=connections)
        connections = max(1, min(2000, round(connections * rate / probe["rps"])))
    return connections


def one_run(
    rate: float | None, duration: float, pinned: bool, flush: float, buffer: int, work: Path
) -> dict[str, Any]:
    sink = str(work / "access.jsonl")
    receiver = Receiver(0 if pinned else None, sink)
    listener, admin = free_port(), free_port()
    try:
        with running_envoy(
            envoy_config(listener, admin, receiver.port, flush, buffer), 1 if pinned else None, work
        ):
            wait_http(admin)
            cpu = 1 if pinned else None
            wrk(listener, 1.0, cpu)  # warm-up: the ALS stream opens
            connections = calibrate(listener, cpu, rate) if rate else CONNECTIONS
            time.sleep(flush + 1.0)
            before_e, before_r = envoy_stats(admin), dict(receiver.latest)
            result = wrk(
                listener, duration, cpu, delay_ms=2 if rate else 0, connections=connections
            )
            time.sleep(flush + 1.5)  # Envoy's last flush, then the receiver's queue
            after_e, after_r = envoy_stats(admin), dict(receiver.latest)
    finally:
        receiver.stop()

    def de(name: str) -> int:
        key = f"access_logs.grpc_access_log.{name}"
        return after_e.get(key, 0) - before_e.get(key, 0)

    def dr(name: str) -> int:
        return int(after_r.get(name, 0)) - int(before_r.get(name, 0))

    served = after_e.get("http.bench.downstream_rq_completed", 0) - before_e.get(
        "http.bench.downstream_rq_completed", 0
    )
    return {
        "rps": result["rps"],
        "connections": result["connections"],
        "served": served,
        "envoy_logged": de("logs_written"),
        "envoy_dropped": de("logs_dropped"),
        "envoy_flush_failed": de("grpc_entries_flush_failed"),
        "received": dr("entries"),
        "processed": dr("processed_entries"),
        "receiver_dropped": dr("dropped_entries") + dr("sink_dropped"),
        "receiver_cpu": (after_r.get("cpu", 0) - before_r.get("cpu", 0)) / duration,
    }


def section(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    header = (
        "run", "req/s", "requests", "logged by Envoy", "dropped by Envoy", "send failures",
        "received", "processed", "dropped by receiver", "receiver CPU (cores)",
    )  # fmt: skip
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        cells = [
            name, f"{r['rps']:,.0f}", f"{r['served']:,}", f"{r['envoy_logged']:,}",
            f"{r['envoy_dropped']:,}", f"{r['envoy_flush_failed']:,}", f"{r['received']:,}",
            f"{r['processed']:,}", f"{r['receiver_dropped']:,}", f"{r['receiver_cpu']:.2f}",
        ]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return (
        "### Envoy's buffered gRPC access logging as the source\n\n"
        f"Envoy 1.40 `--concurrency 1`, listener answering from `direct_response`, Junction's "
        f"HCM access logger (flush {args.flush:g} s, buffer {args.buffer} bytes); wrk `-t1 "
        f"-c{CONNECTIONS} -d{args.duration:g}s` sending the decision header; receiver with "
        "windows and the JSON-lines file sink. Pinned: receiver on CPU 0, Envoy and wrk "
        "sharing CPU 1. Unpaced: 32 connections. Paced: every connection waits 2 ms between "
        "requests (`loadtest/als/paced.lua`), as many connections as two 1 s calibration runs "
        "say the rate needs.\n\n"
        + "\n".join(rows)
        + f"\n\n```sh\n.venv/bin/python loadtest/als/bench_envoy.py --duration {args.duration:g} "
        f"--rate {args.rate:g} --out docs/benchmarks.md\n```\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=20_000.0, help="paced run, requests/s")
    p.add_argument("--flush", type=float, default=1.0, help="Envoy's buffer_flush_interval")
    p.add_argument("--buffer", type=int, default=16384, help="Envoy's buffer_size_bytes")
    p.add_argument("--out")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    runs = {
        "pinned, unpaced (peak)": (None, True),
        f"pinned, paced at {args.rate:,.0f}/s": (args.rate, True),
        "unpinned (2 cores shared), unpaced": (None, False),
        f"unpinned, paced at {args.rate:,.0f}/s": (args.rate, False),
    }
    results = {}
    for name, (rate, pinned) in runs.items():
        with tempfile.TemporaryDirectory(prefix="als-bench-") as work:
            results[name] = one_run(
                rate, args.duration, pinned, args.flush, args.buffer, Path(work)
            )
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    text = section(results, args)
    print(text)
    if args.out:
        from docsection import update_section

        update_section(Path(args.out), "envoy", text)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
