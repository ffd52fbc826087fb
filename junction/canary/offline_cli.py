"""``junction canary replay`` and ``junction canary simulate``: the controller, offline.

Both load the config like every other command (path-named errors, exit 1) and drive the
live controller code: :mod:`junction.canary.replay` over recorded access logs,
:mod:`junction.canary.simulate` against synthetic traffic. Neither touches a state store
or an Envoy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from junction.als.logfile import BadLine, log_files, read_log
from junction.canary.replay import LIVE_TICK, replay
from junction.canary.simulate import (
    OUTCOMES,
    Simulation,
    Summary,
    Traffic,
    min_ramp_seconds,
    simulate,
    single_ramp,
    summarize,
)
from junction.canary.state import CanaryEvent
from junction.config.errors import ConfigError, Problem
from junction.config.load import load_config
from junction.config.model import Config
from junction.errors import JunctionError

__all__ = ["add_offline_parsers", "run_replay", "run_simulate", "share"]

#: Bad lines printed one by one before the rest are only counted.
MAX_BAD_LINES_SHOWN = 50


def share(text: str) -> float:
    """A share 0..1 from ``0.01`` or ``1%`` (argparse type)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (0.01 or 1%)") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1 (0%..100%)")
    return value


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return value

    return parse


def add_offline_parsers(csub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``replay`` and ``simulate`` under ``junction canary``."""
    r = csub.add_parser(
        "replay", help="run the controller over recorded access logs (a dry run of the policy)"
    )
    r.add_argument("-c", "--config", required=True, help="the config with the ramp policy")
    r.add_argument(
        "--log", required=True, action="append", help="JSON-lines access log (repeatable)"
    )
    r.add_argument("--json", action="store_true", help="one JSON object per decision")
    r.add_argument("--tick", type=_positive(float), default=LIVE_TICK, help="controller period (s)")

    s = csub.add_parser("simulate", help="run the controller against synthetic traffic")
    s.add_argument("-c", "--config", required=True, help="the config with the ramp policy")
    s.add_argument("--service", help="the service whose ramp to simulate (if several)")
    s.add_argument("--baseline-error", type=share, required=True, metavar="P")
    s.add_argument("--candidate-error", type=share, required=True, metavar="P")
    s.add_argument("--latency-ratio", type=_positive(float), default=1.0, metavar="R")
    s.add_argument("--latency-ms", type=_positive(float), default=20.0, help="median latency")
    s.add_argument("--rps", type=_positive(float), required=True, metavar="N")
    s.add_argument("--runs", type=_positive(int), required=True, metavar="K")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--workers", type=_positive(int), default=1, help="processes")
    s.add_argument(
        "--max-seconds",
        type=_positive(float),
        help="a run still undecided after this ends (default: 4x the minimum ramp time)",
    )
    s.add_argument("--json", action="store_true", help="print the results as JSON")


@contextlib.contextmanager
def _quiet_controller() -> Iterator[None]:
    """The controller logs each decision (live, that is the operator's record); offline,
    the command prints them itself, so the log says only what goes wrong (or everything,
    at ``--log-level debug``)."""
    log = logging.getLogger("junction.canary")
    level = log.level
    if not log.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _config(path: str) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(path, [Problem("", f"cannot read: {reason}")]) from None
    return load_config(text, path)


def _when(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_event(event: CanaryEvent) -> str:
    """One decision and its evidence, for people."""
    line = (
        f"{_when(event.at)} {event.service} {event.action} {event.from_weight}%"
        f" -> {event.to_weight}%: {event.reason}"
    )
    if event.evidence is not None:
        line += "\n  evidence: " + orjson.dumps(event.evidence).decode()
    return line


def run_replay(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print every decision of a replay (stdout), the bad lines and, with ``--json``, the
    summary (stderr). Exit 0."""
    out = out or sys.stdout
    err = err or sys.stderr
    config = _config(args.config)
    files = log_files(args.log)
    shown = 0

    def on_event(event: CanaryEvent) -> None:
        if args.json:
            out.write(orjson.dumps(event.to_json()).decode() + "\n")
        else:
            out.write(format_event(event) + "\n")

    def on_bad(bad: BadLine) -> None:
        nonlocal shown
        shown += 1
        if shown <= MAX_BAD_LINES_SHOWN:
            err.write(f"junction canary replay: {bad} (skipped)\n")

    with _quiet_controller():
        result = asyncio.run(
            replay(
                config, read_log(args.log), tick=args.tick, on_event=on_event, on_bad_line=on_bad
            )
        )
    if result.bad_lines > MAX_BAD_LINES_SHOWN:
        err.write(
            f"junction canary replay: {result.bad_lines - MAX_BAD_LINES_SHOWN} more malformed"
            " lines skipped\n"
        )
    span = (
        f"log time {_when(result.start)} .. {_when(result.end)}, {result.ticks} ticks"
        if result.start is not None and result.end is not None
        else "no records"
    )
    summary = (
        f"replayed {result.records} records from {len(files)} file(s)"
        f" ({result.bad_lines} malformed lines skipped); {span}"
    )
    finals = [
        f"{name}: {state.phase.value} at {state.weight}% ({state.reason})"
        for name, state in sorted(result.states.items())
    ]
    if not result.states and result.records:
        finals.append("no service in the config has a canary ramp: nothing was decided")
    target = err if args.json else out
    target.write("\n".join([summary, *finals]) + "\n")
    return 0


def _pair(v: tuple[float, float] | None, unit: str) -> str:
    return "-" if v is None else f"median {v[0]:.0f}{unit}, p90 {v[1]:.0f}{unit}"


def format_summary(sim: Simulation, summary: Summary, seed: int) -> str:
    """The simulation's rates and timings, for people."""
    _, policy = single_ramp(sim.config, sim.service)
    tr = sim.traffic
    lines = [
        f"{policy.service}: {summary.runs} simulated ramps, steps {list(policy.steps)}"
        f" every {policy.interval:g}s, tick {sim.tick:g}s, {tr.rps:g} req/s; errors"
        f" baseline {tr.baseline_error:.2%} candidate {tr.candidate_error:.2%}, candidate"
        f" latency x{tr.latency_ratio:g} (median {tr.latency_ms:g} ms); seed {seed}",
    ]
    for name in OUTCOMES:
        r = summary.rates[name]
        lines.append(
            f"  {name:<10}{r.count:>7}  {r.share:7.2%} [95% CI {r.low:.2%}, {r.high:.2%}]"
            f"  time: {_pair(summary.seconds[name], 's')};"
            f" candidate requests: {_pair(summary.candidate_requests[name], '')}"
        )
    lines.append(f"  minimum ramp time (one interval per step): {min_ramp_seconds(policy):g}s")
    return "\n".join(lines)


def run_simulate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the simulation's rates and timings. Exit 0."""
    out = out or sys.stdout
    config = _config(args.config)
    try:
        traffic = Traffic(
            rps=args.rps,
            baseline_error=args.baseline_error,
            candidate_error=args.candidate_error,
            latency_ratio=args.latency_ratio,
            latency_ms=args.latency_ms,
        )
        sim = Simulation(config, args.service, traffic, max_seconds=args.max_seconds)
        single_ramp(config, args.service)
    except ValueError as exc:
        raise JunctionError(str(exc)) from None
    with _quiet_controller():
        summary = summarize(simulate(sim, args.runs, seed=args.seed, workers=args.workers))
    if args.json:
        _, policy = single_ramp(config, args.service)
        body = {
            "service": policy.service,
            "seed": args.seed,
            "traffic": {
                "rps": traffic.rps,
                "baseline_error": traffic.baseline_error,
                "candidate_error": traffic.candidate_error,
                "latency_ratio": traffic.latency_ratio,
                "latency_ms": traffic.latency_ms,
            },
            "min_ramp_seconds": min_ramp_seconds(policy),
            **summary.to_json(),
        }
        out.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(format_summary(sim, summary, args.seed) + "\n")
    return 0
