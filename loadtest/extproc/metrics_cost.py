#!/usr/bin/env python3
"""What metrics cost the decision service's hot path (issue 15), side by side in one run.

The only per-request work metrics add is the time-to-answer histogram
(:meth:`junction.extproc.processor.Processor.respond` times each answer into
:class:`~junction.extproc.counters.AnswerTimes`); every other metric is read from counters
the service keeps anyway, at scrape time. So this measures the server's CPU per decision
for one worker's processor with and without the histogram: the same table, the same
requests (Envoy 1.40's http_service JSON; a pinned request and a canary-keyed one), rows
interleaved A B A B ... so that other load on the machine spreads over both, CPU time
(``time.process_time``) per call, the median of the rounds, and the ratio.

    .venv/bin/python loadtest/extproc/metrics_cost.py --rounds 15 --calls 20000 \\
        --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import json_format

from junction.config.load import load_config
from junction.extproc.counters import AnswerTimes, Counters
from junction.extproc.http_adapter import HttpProcessor
from junction.extproc.table import DecisionTable

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- metrics-cost:start -->", "<!-- metrics-cost:end -->"

CONFIG = """\
listener:
  listen: {port: 8000}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {prefix: ["/api"], weight: 90}
    web-api-go:   {prefix: ["/api"], weight: 10}
cluster: {loadbalancer: {web-api-perl: {}, web-api-go: {}}}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    pin: {trust: any}
    canary: {version: go, weight: 10, key: {header: x-user-id}}
"""


def envoy_json(**headers: str) -> bytes:
    """A ProcessingRequest as Envoy's http_service sends it."""
    all_headers = {":authority": "example.com", ":path": "/api/x", ":method": "GET", **headers}
    msg = ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode())
                    for k, v in all_headers.items()
                ]
            ),
            end_of_stream=True,
        )
    )
    text = json_format.MessageToJson(
        msg, preserving_proto_field_name=True, indent=None,
        always_print_fields_with_no_presence=True,
    )  # fmt: skip
    return text.encode()


def cpu_per_call(processor: HttpProcessor, bodies: list[bytes], calls: int) -> float:
    respond = processor.respond
    n = len(bodies)
    started = time.process_time()
    for i in range(calls):
        respond(bodies[i % n])
    return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--out", type=Path, help="update this markdown file's section")
    args = parser.parse_args()
    table = DecisionTable(load_config(CONFIG, "bench"))
    rows = {
        "pin (x-junction-version)": [envoy_json(**{"x-junction-version": "go"})],
        "canary bucket (x-user-id)": [envoy_json(**{"x-user-id": f"user-{i}"}) for i in range(512)],
    }
    results: dict[str, dict[str, list[float]]] = {}
    for name, bodies in rows.items():
        plain = HttpProcessor(Counters(), table)
        timed = HttpProcessor(Counters(), table, times=AnswerTimes())
        cpu_per_call(plain, bodies, args.calls // 10)  # warm the caches of both
        cpu_per_call(timed, bodies, args.calls // 10)
        runs: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.rounds):
            runs["without"].append(cpu_per_call(plain, bodies, args.calls))
            runs["with"].append(cpu_per_call(timed, bodies, args.calls))
        results[name] = runs
    lines = [
        START,
        "",
        f"Run on {platform.machine()}, Python {platform.python_version()},"
        f" {args.rounds} interleaved rounds of {args.calls} calls per row"
        " (median; ratio per round, median of the ratios):",
        "",
        "| request | CPU per decision, no histogram | with the histogram"
        " | ratio (with / without) |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        ratios = [w / o for w, o in zip(runs["with"], runs["without"], strict=True)]
        lines.append(
            f"| {name} | {statistics.median(runs['without']) * 1e6:.2f} us"
            f" | {statistics.median(runs['with']) * 1e6:.2f} us"
            f" | {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) |"
        )
    lines += ["", END]
    section = "\n".join(lines)
    print(section)
    if args.out is not None:
        text = args.out.read_text() if args.out.exists() else ""
        if START in text:
            text = re.sub(re.escape(START) + ".*?" + re.escape(END), section, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        args.out.write_text(text)


if __name__ == "__main__":
    main()
