"""The longer load-test runs behind docs/benchmarks.md ("Load tests"): every scenario at a
paced 200 requests/s for ``--duration`` seconds, and migration unpaced (the peak), each on
its own demo stack through the runner (``run.py``, the same code as ``make loadtest``).

    .venv/bin/python loadtest/scenarios/bench.py --duration 60 --out docs/benchmarks.md

Writes the section between ``<!-- loadtest:start -->`` and ``<!-- loadtest:end -->`` (the
rest of the file belongs to other benchmarks and is kept); results folders stay in
loadtest/results/bench-TIMESTAMP/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
START, END = "<!-- loadtest:start -->", "<!-- loadtest:end -->"


@dataclass(frozen=True)
class Run:
    name: str
    scenario: str
    users: int
    rate: float
    duration: float
    #: Options of the locustfile (after ``--``).
    args: tuple[str, ...] = ()

    def make(self) -> str:
        rate = "" if self.rate == 200 else f" RATE={self.rate:g}"
        users = "" if self.users == 20 else f" USERS={self.users}"
        extra = f' ARGS="-- {" ".join(self.args)}"' if self.args else ""
        return (
            f"make loadtest SCENARIO={self.scenario} DURATION={self.duration:g}{users}{rate}{extra}"
        )


def runs(duration: float, peak: float) -> list[Run]:
    paced = [Run(s, s, 20, 200, duration) for s in ("migration", "pinned", "experiments")]
    return [
        *paced,
        Run("canary (go fails 20 %)", "canary", 20, 200, duration),
        Run(
            "canary (go healthy)",
            "canary",
            20,
            200,
            duration,
            ("--fault-rate", "0", "--expect-phase", "promoted"),
        ),
        Run("migration, unpaced (peak)", "migration", 50, 0, peak),
    ]


def execute(run: Run, results: Path) -> tuple[int, dict[str, Any]]:
    cmd = [
        sys.executable, str(HERE / "run.py"), run.scenario, "--duration", f"{run.duration:g}",
        "--users", str(run.users), "--rate", f"{run.rate:g}", "--results", str(results),
        *(["--", *run.args] if run.args else []),
    ]  # fmt: skip
    print(f"bench: {run.make()}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _CHILD[:] = [proc]
    try:
        proc.wait(timeout=run.duration + 300)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=60)
    summary = json.loads((results / "summary.json").read_text())
    return proc.returncode, summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def shares_text(s: dict[str, Any]) -> str:
    """The run's shares in a table cell: observed (expected)."""
    groups = s["shares"]
    if s["scenario"] == "canary":
        c = s["extra"].get("canary") or {}
        go = s["versions"].get(c.get("candidate", ""), {})
        at = c.get("rollback_at")
        when = f"rolled back at {at:.1f} s" if at is not None else f"{c.get('phase')}"
        if c.get("phase") == "promoted":
            steps = [f"{w}% at {t:.0f} s" for t, w, _ in c.get("states", [])]
            when = "promoted: " + ", ".join(steps)
        return f"{c.get('candidate')} {_pct(go.get('share'))} of all; {when}"
    cells = []
    for group, g in groups.items():
        rows = g["rows"]
        expected = [r for r in rows.values() if r["expected"] is not None]
        if len(expected) == 1 and expected[0]["expected"] == 1.0:
            continue  # pins and /asset: summarised below
        if group == "arms":
            continue  # requests per arm: reported; the check is on users per arm
        parts = [
            f"{k} {_pct(r['share'])}" + (f" ({100 * r['expected']:g})" if r["expected"] else "")
            for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["count"])
        ]
        cells.append(f"{group}: " + ", ".join(parts))
    single = [
        g
        for g in groups.values()
        if [r["expected"] for r in g["rows"].values() if r["expected"] is not None] == [1.0]
    ]
    if single:
        held = sum(max(r["count"] for r in g["rows"].values()) for g in single)
        total = sum(g["total"] for g in single)
        label = "pins held" if s["scenario"] == "pinned" else "/asset on web-asset"
        cells.append(f"{label}: {held:,} of {total:,}")
    return "; ".join(cells)


def section(rows: list[tuple[Run, int, dict[str, Any]]], info: dict[str, str]) -> str:
    out = [
        "## Load tests: the Locust scenarios (issue 5)",
        "",
        "Each row is one `make loadtest` run (commands below the table): its own demo stack on",
        "free ports (`junction up` with a real Envoy, one decision-service worker, the demo",
        "upstreams: four aiohttp servers in one process) and Locust (`FastHttpUser`, one",
        "process), all on the same machine. p50/p95/p99 are each request's time as Locust saw",
        "it (DDSketch, 1 % relative error). *Envoy / Locust*: Envoy's",
        "`http.junction.downstream_rq_completed` grew by this much during the run, against the",
        "requests Locust counted; the check also compares each cluster's `upstream_rq_total`.",
        f"Machine: {info['machine']}.",
        f"Load average (1 min) at start and end: {info['load']}. Measured {info['date']}.",
        "",
        "| run | users | target req/s | req/s | requests | failures | p50 ms | p95 ms | p99 ms "
        "| shares (expected %) | Envoy / Locust | Locust CPU (cores) | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, rc, s in rows:
        lat = s["latency_ms"]
        envoy = s.get("envoy") or {}
        passed = sum(c["ok"] for c in s["checks"])
        verdict = f"{passed}/{len(s['checks'])} pass" + ("" if rc == 0 else f" (exit {rc})")
        target = f"{run.rate:g}" if run.rate else "unpaced"
        out.append(
            f"| {run.name} | {run.users} | {target} | {s['rps']:,.0f} | {s['requests']:,} "
            f"| {s['failures']:,} | {lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} "
            f"| {shares_text(s)} | {envoy.get('downstream_rq_completed', 0):,} / "
            f"{envoy.get('locust_requests', 0):,} | {s.get('locust_cpu_cores') or 0:.2f} "
            f"| {verdict} |"
        )
    out += ["", "Commands (from the repository root):", "", "```sh"]
    out += [run.make() for run, _, _ in rows]
    out += [
        "# all of the above, and this section:",
        f".venv/bin/python loadtest/scenarios/bench.py --duration {info['duration']} "
        f"--peak-duration {info['peak']} --out docs/benchmarks.md",
        "```",
    ]
    for _run, _, s in rows:
        c = s["extra"].get("canary")
        if not c:
            continue
        if c.get("rollback") is None:
            steps = " -> ".join(f"{w} % ({t:.0f} s)" for t, w, _ in c.get("states", []))
            errors = s["extra"].get("locust_errors", {}).get(c["candidate"], {})
            out += [
                "",
                f"Healthy canary: the controller ramped {c['candidate']} {steps}, phase "
                f"{c.get('phase')}; {errors.get('failures', 0)} failures in "
                f"{errors.get('requests', 0):,} requests to it.",
            ]
            continue
        rb = c.get("rollback") or {}
        cand = (rb.get("evidence") or {}).get("candidate") or {}
        errors = s["extra"].get("locust_errors", {}).get(c["candidate"], {})
        after = next((x for x in s["checks"] if x["name"].startswith("no failures from")), None)
        out += [
            "",
            f"Canary: the controller rolled {c['candidate']} back {c.get('rollback_at')} s into "
            f"the run, on {cand.get('requests')} candidate requests with an error rate of "
            f"{_pct(cand.get('error_rate'))} (anytime-valid test, alpha 5 %). Locust's own count: "
            f"{errors.get('failures', 0)} failures of {errors.get('requests', 0)} requests to "
            f"{c['candidate']}, none on {c['baseline']}"
            + (f"; {after['detail']} after the rollback + 2 s." if after else "."),
        ]
    out += [
        "",
        "Reading these figures:",
        "",
        "- The paced rows (200 requests/s) are about correctness under steady load: shares",
        "  within tolerance, every pin held, no user changing arm, the rollback; their latency",
        "  is that of a lightly loaded stack (ext_proc decision, aiohttp upstream, Locust).",
        "- The unpaced row is the whole machine's ceiling, not Junction's: Locust, Envoy, the",
        "  decision service and the demo upstreams share 2 cores (see *Locust CPU*). The",
        '  decision service\'s own ceiling is measured in isolation in "ext_proc" above.',
        "- Shares are checked within max(4 standard errors, 1 %).",
        f"- {agreement(rows)}",
    ]
    return "\n".join(out) + "\n"


def agreement(rows: list[tuple[Run, int, dict[str, Any]]]) -> str:
    diffs = [abs((s.get("envoy") or {}).get("difference", 0)) for _, _, s in rows]
    if not any(diffs):
        return (
            "Envoy's counters matched Locust's exactly in every run (users finish the\n"
            "  request in flight when the run stops: `--stop-timeout`)."
        )
    return f"Envoy's counters and Locust's differed by at most {max(diffs)} requests."


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    return f"{cores} cores ({model or platform.machine()}), Python {platform.python_version()}"


def write(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        after = rest.split(END, 1)[1]
    else:
        before, after = doc.rstrip("\n") + "\n\n", "\n"
    path.write_text(before + START + "\n" + text + END + after)


_CHILD: list[subprocess.Popen[bytes]] = []


def _terminated(signum: int, _frame: object) -> None:
    for child in _CHILD:
        if child.poll() is None:
            child.terminate()
            child.wait(timeout=60)
    raise SystemExit(143)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds per paced run")
    p.add_argument("--peak-duration", type=float, default=30.0, help="seconds of the peak run")
    p.add_argument("--out", type=Path, help="write the section into this file")
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="re-render from a finished bench folder (its bench.json), run nothing",
    )
    args = p.parse_args()
    # SIGTERM: stop the run in progress cleanly (run.py unwinds on SIGTERM too).
    signal.signal(signal.SIGTERM, _terminated)
    if args.source:
        saved = json.loads((args.source / "bench.json").read_text())
        info = saved["info"]
        rows = [
            (
                Run(**{**r["run"], "args": tuple(r["run"]["args"])}),
                r["rc"],
                json.loads((args.source / r["dir"] / "summary.json").read_text()),
            )
            for r in saved["runs"]
        ]
    else:
        base = ROOT / "loadtest" / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
        load_start = os.getloadavg()[0]
        rows, saved_runs = [], []
        for i, run in enumerate(runs(args.duration, args.peak_duration)):
            rc, summary = execute(run, base / f"{i}-{run.scenario}")
            rows.append((run, rc, summary))
            saved_runs.append({"run": asdict(run), "rc": rc, "dir": f"{i}-{run.scenario}"})
        info = {
            "machine": machine(),
            "load": f"{load_start:.2f} / {os.getloadavg()[0]:.2f}",
            "date": time.strftime("%Y-%m-%d"),
            "duration": f"{args.duration:g}",
            "peak": f"{args.peak_duration:g}",
        }
        (base / "bench.json").write_text(json.dumps({"info": info, "runs": saved_runs}, indent=1))
    text = section(rows, info)
    print(text)
    if args.out:
        write(args.out, text)
    return 0 if all(rc == 0 for _, rc, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
