#!/usr/bin/env python3
"""The decision table's route lookup as configs grow (issue 13): 10, 100 and 1000 versioned
prefixes, side by side in one run.

Per size, three figures for a request on the *last* route Envoy would try (the worst case
of a scan): Envoy's first-match rule as a linear scan over the routes (what
``DecisionTable.decide`` did before), the radix tree it uses now
(:class:`junction.extproc.prefixes.PrefixIndex`), and a whole ``decide()`` (pin, canary
hash, header mutations) with the tree. Rows are interleaved round by round (the machine is
shared); the median of ``--repeat`` rounds is kept. Timings are this machine's; the ratios
and the flat line are the result.

    .venv/bin/python loadtest/extproc/table_bench.py --repeat 5 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from junction.config.load import load_config
from junction.extproc.counters import Counters
from junction.extproc.prefixes import PrefixIndex
from junction.extproc.table import DecisionTable

SIZES = (10, 100, 1000)
START, END = "<!-- table-bench:start -->", "<!-- table-bench:end -->"


def document(n: int) -> str:
    prefixes = ", ".join(f'"/api/v1/service-{i:04d}"' for i in range(n))
    return f"""\
listener: {{listen: {{port: 8000}}}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {{prefix: [{prefixes}], weight: 90}}
    web-api-go:   {{prefix: [{prefixes}], weight: 10}}
cluster: {{loadbalancer: {{web-api-perl: {{}}, web-api-go: {{}}}}}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{trust: any}}
    canary: {{version: go, weight: 10, key: {{header: x-user-id}}}}
"""


def per_call(fn: Callable[[], object], budget: float) -> float:
    """Seconds per call of ``fn``, over about ``budget`` seconds (bounded)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + budget
    while True:
        for _ in range(200):
            fn()
        calls += 200
        now = time.perf_counter()
        if now > deadline:
            return (now - start) / calls


def measure(n: int, budget: float) -> tuple[float, float, float]:
    config = load_config(document(n), "bench")
    table = DecisionTable(config)
    routes = [(vh_route.prefix.encode(), vh_route) for vh_route in config.virtual_hosts()[0].routes]
    index = PrefixIndex(routes)
    path = routes[-1][0] + b"/items/42"  # the last route in Envoy's order

    def scan() -> object:
        for prefix, value in routes:  # the pre-issue-13 lookup: one startswith per route
            if path.startswith(prefix):
                return value
        return None

    headers = {
        ":authority": [b"example.com"],
        ":path": [path],
        ":method": [b"GET"],
        "x-user-id": [b"user-42"],
    }
    counters = Counters()
    assert index.match(path) is scan()
    assert table.decide(headers, None, counters).tag.startswith("canary=")
    return (
        per_call(scan, budget),
        per_call(lambda: index.match(path), budget),
        per_call(lambda: table.decide(headers, None, counters), budget),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per figure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    runs: dict[int, list[tuple[float, float, float]]] = {n: [] for n in SIZES}
    for _ in range(args.repeat):
        for n in SIZES:  # interleaved: other load spreads over every size
            runs[n].append(measure(n, args.budget))
    lines = [
        START,
        "## Decision table: route lookup as configs grow",
        "",
        f"One process, pure Python; the median of {args.repeat} interleaved rounds; a request "
        "on the last route in Envoy's order. Load average (1 min) at start / end: "
        f"{load:.2f} / {os.getloadavg()[0]:.2f} (a shared, loaded 2-core machine).",
        "",
        "| versioned prefixes | scan (before) µs | radix tree µs | scan / tree | "
        "whole decide() µs |",
        "|---|---|---|---|---|",
    ]
    for n in SIZES:
        scan, tree, decide = (statistics.median(r[i] for r in runs[n]) * 1e6 for i in range(3))
        lines.append(f"| {n} | {scan:.2f} | {tree:.2f} | {scan / tree:.1f}x | {decide:.2f} |")
    command = " ".join(
        [".venv/bin/python loadtest/extproc/table_bench.py", *(argv or sys.argv[1:])]
    )
    lines += ["", "```sh", command, "```", END]
    section = "\n".join(lines) + "\n"
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
