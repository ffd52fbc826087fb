"""Run one load-test scenario and report it: ``make loadtest SCENARIO=... DURATION=...``.

    .venv/bin/python loadtest/scenarios/run.py SCENARIO [--duration 30] [--users 20]
        [--rate 200] [--max-requests N] [--stack free|fixed|none] [--host URL]
        [--control URL] [--envoy-admin HOST:PORT] [--results DIR] [--allow-remote]
        [-- OPTIONS OF THE LOCUSTFILE...]

SCENARIO is ``migration``, ``pinned``, ``experiments`` or ``canary`` (loadtest/scenarios/
SCENARIO.py). ``--stack free`` (the default) starts the demo stack for the run on free
ports (upstreams, ``junction up`` with its Envoy and decision service, the config of
examples/loadtest.yaml or examples/loadtest-canary.yaml); ``fixed`` on the example's own
ports (8000, 8081, 9901: not beside ``make run``); ``none`` uses what runs at ``--host``
and ``--control`` (default: ``make run``'s).

Locust runs headless, bounded by ``--duration`` and ``--max-requests``; a progress line
shows while it runs. Into one results folder (``--results``, default
loadtest/results/SCENARIO-TIMESTAMP) go Locust's CSV and HTML, ``scenario.json`` (the
locustfile's per-second timeline and checks), ``summary.json`` (requests/s, p50/p95/p99,
failures, per-version shares, checks, and the same run as Envoy's stats count it),
``throughput.png``, ``latency.png``, ``shares.png``, and the logs. The summary is printed
as a table. Exit code: 0 when every check passed, 1 when one failed, 2 when the run could
not start.

Every target must be loopback unless ``--allow-remote`` is given: load generated here can
hurt a real deployment, so aiming at one must be explicit.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from _checks import LoadTestError, require_loopback
from _report import build_summary, envoy_counters, format_table, plot
from _stack import EXAMPLES, ROOT, DemoStack

HERE = Path(__file__).resolve().parent
#: scenario -> the config its own stack serves.
SCENARIOS = {
    "migration": EXAMPLES / "loadtest.yaml",
    "pinned": EXAMPLES / "loadtest.yaml",
    "experiments": EXAMPLES / "loadtest.yaml",
    "canary": EXAMPLES / "loadtest-canary.yaml",
}
#: Beyond --duration, how long Locust may take to stop and write its files before it is
#: told to (SIGTERM), then made to (SIGKILL).
STOP_GRACE = 60.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py",
        description="Run a Locust scenario against Junction and report it.",
        epilog="Options after -- go to the locustfile (e.g. -- --expect web-api-perl=80,"
        "web-api-go=20); see the top of loadtest/scenarios/SCENARIO.py.",
    )
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    p.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    p.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="target requests/s over all users; 0: unpaced (default 200)",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000,
        help="stop after this many requests (default 1,000,000)",
    )
    p.add_argument(
        "--stack",
        choices=["free", "fixed", "none"],
        default="free",
        help="start the demo stack on free ports (default), on the example's "
        "ports, or use a running one",
    )
    p.add_argument("--config", type=Path, help="config for the started stack")
    p.add_argument(
        "--instances",
        type=Path,
        default=EXAMPLES / "instances.yaml",
        help="instances for the started stack",
    )
    p.add_argument(
        "--extproc-workers",
        type=int,
        default=1,
        help="decision service processes of the started stack (default 1)",
    )
    p.add_argument(
        "--stack-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the started stack's `junction up`",
    )
    p.add_argument("--host", default="http://127.0.0.1:8000", help="with --stack none")
    p.add_argument("--host-header", default="example.com", help="Host of every request")
    p.add_argument(
        "--control",
        default="http://127.0.0.1:8081",
        help="with --stack none: the control plane's HTTP port (/status, /canary)",
    )
    p.add_argument(
        "--envoy-admin",
        help="with --stack none: Envoy's admin HOST:PORT "
        "(default: what the control plane's /status names)",
    )
    p.add_argument("--results", type=Path, help="results folder (default loadtest/results/...)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow targets that are not loopback (a real deployment)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1 :]
    args = _parser().parse_args(argv)
    # SIGTERM (a CI job cancelled, `kill`) unwinds like Ctrl-C: the finally blocks stop
    # Locust and the stack this run started.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(args, passthrough)
    except LoadTestError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nloadtest: interrupted", file=sys.stderr)
        return 130


def _terminated(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _check_args(args: argparse.Namespace) -> None:
    if args.duration <= 0 or args.users < 1 or args.rate < 0 or args.max_requests < 1:
        raise LoadTestError("--duration > 0, --users >= 1, --rate >= 0, --max-requests >= 1")
    if args.stack == "none":
        require_loopback(args.host, allow_remote=args.allow_remote, what="--host")
        require_loopback(args.control, allow_remote=args.allow_remote, what="--control")
        if args.envoy_admin:
            require_loopback(args.envoy_admin, allow_remote=args.allow_remote, what="--envoy-admin")


def _results_dir(args: argparse.Namespace) -> Path:
    if args.results:
        return Path(args.results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return ROOT / "loadtest" / "results" / f"{args.scenario}-{stamp}"


def _canary_targets(config: Path, stack: DemoStack) -> list[str]:
    """Locustfile options the canary scenario needs from a started stack: where to read
    the ramp, and the candidate's upstreams to make fail."""
    doc = yaml.safe_load(config.read_text())
    for service, sv in (doc.get("versions") or {}).items():
        canary = sv.get("canary")
        if canary:
            cluster = sv["clusters"][canary["version"]]
            out = ["--service", service, "--control", stack.control]
            for port in stack.ports.upstreams.get(cluster, []):
                out += ["--fault-upstream", f"http://127.0.0.1:{port}"]
            return out
    raise LoadTestError(f"{config}: no service has a canary (versions.SERVICE.canary)")


def _status_admin(control: str) -> str | None:
    """Envoy's admin address as the control plane's /status names it (None: unknown)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{control.rstrip('/')}/status", timeout=3) as resp:
            admin = json.loads(resp.read()).get("envoy_admin")
            return str(admin) if admin else None
    except (OSError, ValueError):
        return None


def _run(args: argparse.Namespace, passthrough: list[str]) -> int:
    _check_args(args)
    results = _results_dir(args)
    results.mkdir(parents=True, exist_ok=True)
    locustfile = HERE / f"{args.scenario}.py"
    config = args.config or SCENARIOS[args.scenario]
    stack: DemoStack | None = None
    extra: list[str] = []
    admin: str | None
    try:
        if args.stack != "none":
            print(
                f"loadtest: starting the demo stack ({config.name}, {args.stack} ports)...",
                flush=True,
            )
            stack = DemoStack(
                config,
                args.instances,
                results,
                free_ports=args.stack == "free",
                extproc_workers=args.extproc_workers,
                extra_args=tuple(args.stack_arg),
            )
            stack.start()
            host, control, admin = stack.host, stack.control, stack.envoy_admin()
            if args.scenario == "canary":
                extra = _canary_targets(config, stack)
        else:
            host, control = args.host, args.control
            admin = args.envoy_admin or _status_admin(control)
            if admin:
                require_loopback(admin, allow_remote=args.allow_remote, what="Envoy admin")
            if args.scenario == "canary":
                extra = ["--control", control]
        return _locust_and_report(args, results, locustfile, host, admin, extra, passthrough)
    finally:
        if stack is not None:
            stack.stop()


def _locust_and_report(
    args: argparse.Namespace,
    results: Path,
    locustfile: Path,
    host: str,
    admin: str | None,
    extra: list[str],
    passthrough: list[str],
) -> int:
    before = _counters(admin)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "--host", host, "--users", str(args.users), "--spawn-rate", str(args.users),
        "--run-time", f"{max(1, round(args.duration))}s",
        # Let users finish the request in flight: Locust then counts what Envoy counts.
        "--stop-timeout", "2s",
        "--csv", str(results / "locust"), "--csv-full-history",
        "--html", str(results / "locust.html"), "--only-summary", "--loglevel", "WARNING",
        "--results-dir", str(results), "--rate", str(args.rate),
        "--max-requests", str(args.max_requests), "--host-header", args.host_header,
        *(["--allow-remote"] if args.allow_remote else []), *extra, *passthrough,
    ]  # fmt: skip
    print(
        f"loadtest: {args.scenario} for {args.duration:g} s, {args.users} users, "
        f"{f'{args.rate:g} req/s' if args.rate else 'unpaced'} -> {results}",
        flush=True,
    )
    rc, locust_cpu = _run_locust(cmd, results, args.duration)
    scenario_path = results / "scenario.json"
    if not scenario_path.exists():
        log = (results / "locust.log").read_text(errors="replace")[-3000:]
        print(f"loadtest: Locust wrote no results (exit {rc}):\n{log}", file=sys.stderr)
        return 2
    scenario = json.loads(scenario_path.read_text())
    after = _counters(admin) if before is not None else None
    command = shlex.join([Path(sys.executable).name, "loadtest/scenarios/run.py", *sys.argv[1:]])
    summary = build_summary(
        scenario,
        results=results,
        command=command,
        envoy_before=before,
        envoy_after=after,
        envoy_admin=admin,
    )
    summary["locust_command"] = shlex.join(cmd)
    summary["locust_exit_code"] = rc
    # Near 1.0, Locust itself (one process, one core) was the limit, not the stack.
    summary["locust_cpu_cores"] = (
        round(locust_cpu / summary["duration_s"], 2) if summary["duration_s"] else None
    )
    plots = plot(summary, scenario, results)
    summary["files"] = sorted({*summary["files"], *(p.name for p in plots), "summary.json"})
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    print(format_table(summary), flush=True)
    if rc == 2:
        return 2
    return 0 if summary["ok"] and rc == 0 else 1


def _counters(admin: str | None) -> dict[str, int] | None:
    if not admin:
        return None
    try:
        return envoy_counters(admin)
    except OSError as exc:
        print(f"loadtest: Envoy admin {admin}: {exc}; no Envoy figures", file=sys.stderr)
        return None


def _run_locust(cmd: list[str], results: Path, duration: float) -> tuple[int, float]:
    """Run Locust, print a progress line each second, and stop it if it overstays.
    Returns its exit code and the CPU seconds it used (user + system)."""
    tty = sys.stdout.isatty()
    # Children's usage counts once a child is waited for; the stack's children are not
    # waited for until later, so the difference is Locust's alone.
    cpu_before = _children_cpu()
    deadline = time.monotonic() + duration + STOP_GRACE
    last_print = 0.0
    with (results / "locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                line = _progress_line(results / "progress.json", duration)
                now = time.monotonic()
                if line and tty:
                    print(f"\r{line:<110}", end="", flush=True)
                elif line and now - last_print >= 5:
                    print(line, flush=True)
                    last_print = now
                if now > deadline:
                    print("\nloadtest: Locust overstayed; stopping it", file=sys.stderr)
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if tty:
        print()
    return int(proc.returncode), _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _progress_line(path: Path, duration: float) -> str | None:
    try:
        p: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    shares = []
    for group, counts in sorted(p.get("groups", {}).items()):
        total = sum(counts.values())
        if total and len(counts) > 1:
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
            shares.append(f"{group}: " + " ".join(f"{k} {100 * n / total:.1f}%" for k, n in top))
    canary = f"  canary {p['weight']}% {p['phase']}" if "phase" in p else ""
    p95 = f"{p['p95_ms']:.1f} ms" if p.get("p95_ms") is not None else "-"
    return (
        f"[{p['elapsed']:5.0f}/{duration:g} s] {p['requests']:>8,} req  {p['rps']:>5} req/s  "
        f"{p['failures']:,} failed  p95 {p95}{canary}  " + "; ".join(shares[:2])
    )


if __name__ == "__main__":
    sys.exit(main())
