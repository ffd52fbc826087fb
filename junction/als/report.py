"""``junction report``: experiment results and canary charts from the JSON-lines access log.

Input: the access log the receiver's sink writes (``--log PATH``; its rotated files
``PATH.1``... are read too, oldest first) and, for canaries, the controller's events
(``--events PATH``, JSON lines of :class:`~junction.canary.state.CanaryEvent`).

Per experiment (requests tagged ``exp=NAME:ARM`` by the decision service), per arm:
requests, error rate with its 95 % Wilson interval, p50/p95/p99, and against the control
arm (``--control``, default ``control``): the difference in error rate with the
two-proportion z-test, and the Mann-Whitney U test on latencies
(:mod:`junction.als.stats`); next to those fixed-horizon tests, the anytime-valid p-value
of the error rates (:mod:`junction.als.anytime`), which stays valid however often a running
experiment is looked at. ``--png`` draws, per canary, the candidate's weight and both
sides' error rates over time (:mod:`junction.als.plot`).

A line that is not a JSON object with the record's fields is skipped and counted; the
report says how many.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from junction.als.anytime import anytime_p, bucket_of
from junction.als.errors import ReportError
from junction.als.record import classify
from junction.als.sinks import rotated_paths
from junction.als.stats import ArmAccumulator, Comparison, compare

__all__ = ["Experiment", "Report", "build_report", "read_events", "read_records", "run"]


@dataclass
class Experiment:
    name: str
    arms: dict[str, ArmAccumulator] = field(default_factory=dict)
    #: arm -> time bucket -> [requests, errors] (for the anytime-valid test).
    buckets: dict[str, dict[int, list[int]]] = field(default_factory=dict)

    def anytime_p(self, arm: str, control: str) -> float:
        """The anytime-valid p of ``arm``'s error rate against ``control``'s."""

        def counts(name: str) -> dict[int, tuple[int, int]]:
            return {b: (c[0], c[1]) for b, c in self.buckets.get(name, {}).items()}

        return anytime_p(counts(arm), counts(control))


@dataclass
class Report:
    experiments: dict[str, Experiment] = field(default_factory=dict)
    #: (t, cluster, failed) of every request, for the canary chart.
    timeline: list[tuple[float, str, bool]] = field(default_factory=list)
    records: int = 0
    unreadable: int = 0


def _files(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        found = rotated_paths(p)
        if not found:
            raise ReportError(f"{p}: no such file")
        out.extend(found)
    return out


def read_records(paths: Iterable[str]) -> Iterator[dict[str, Any] | None]:
    """Each line of the logs parsed (None for a line that is not a JSON object)."""
    for path in _files(paths):
        try:
            with path.open("rb") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        yield None
                        continue
                    yield obj if isinstance(obj, dict) else None
        except OSError as exc:
            raise ReportError(f"{path}: cannot read: {exc.strerror}") from None


def read_events(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Canary events from JSON-lines files, sorted by time (bad lines skipped)."""
    events = []
    for obj in read_records(paths):
        if obj is not None and isinstance(obj.get("at"), int | float) and "service" in obj:
            events.append(obj)
    events.sort(key=lambda e: e["at"])
    return events


def build_report(paths: Iterable[str], *, timeline: bool = False) -> Report:
    report = Report()
    for obj in read_records(paths):
        try:
            assert obj is not None
            t = float(obj["t"])
            ms = float(obj["ms"])
            status = int(obj["status"])
            failed = status >= 500 or status == 0 or bool(obj.get("reset"))
            cluster = str(obj["cluster"])
            decision = str(obj.get("decision") or "")
        except (AssertionError, KeyError, TypeError, ValueError):
            report.unreadable += 1
            continue
        report.records += 1
        if timeline:
            report.timeline.append((t + ms / 1000, cluster, failed))
        _, arm = classify(decision)
        if not arm:
            continue
        name, _, arm_name = arm.partition(":")
        exp = report.experiments.setdefault(name, Experiment(name))
        acc = exp.arms.get(arm_name)
        if acc is None:
            acc = exp.arms[arm_name] = ArmAccumulator(arm_name)
        acc.add(ms, failed)
        cell = exp.buckets.setdefault(arm_name, {}).setdefault(bucket_of(t + ms / 1000), [0, 0])
        cell[0] += 1
        cell[1] += failed
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}ms"


def _control(exp: Experiment, wanted: str) -> str:
    return wanted if wanted in exp.arms else sorted(exp.arms)[0]


def comparisons(exp: Experiment, control: str, alpha: float) -> dict[str, Comparison]:
    base = exp.arms[control]
    return {
        name: compare(acc, base, alpha) for name, acc in sorted(exp.arms.items()) if name != control
    }


def render(report: Report, control: str, alpha: float) -> str:
    lines = [
        f"{report.records} requests read"
        + (f", {report.unreadable} unreadable lines skipped" if report.unreadable else ""),
    ]
    if not report.experiments:
        lines.append("no experiment arms in the log (requests tagged exp=NAME:ARM)")
    for name, exp in sorted(report.experiments.items()):
        ctrl = _control(exp, control)
        comps = comparisons(exp, ctrl, alpha)
        lines += [
            "",
            f"experiment {name}: control arm {ctrl!r}; errors: two-proportion z-test;"
            f" latency: Mann-Whitney U (up to 20000 sampled latencies per arm); alpha {alpha:g}",
            "  anytime p: anytime-valid p of the error rates (valid however often you look;"
            " the z-test's p is valid only for one look at a size fixed in advance)",
            f"  {'arm':<16}{'requests':>9}{'errors':>8}  {'error rate [95% CI]':<26}"
            f"{'p50':>9}{'p95':>9}{'p99':>9}   vs control",
        ]
        for arm_name, acc in sorted(exp.arms.items()):
            s = acc.result()
            rate = f"{_pct(s.error_rate)} [{_pct(s.ci_low)}, {_pct(s.ci_high)}]"
            verdict = "(control)"
            c = comps.get(arm_name)
            if c is not None:
                diff = "-" if c.error_diff is None else f"{c.error_diff * 100:+.2f} pts"
                anytime = exp.anytime_p(arm_name, ctrl)
                verdict = (
                    f"errors {diff} p={c.error_p:.3g}"
                    f" {'SIGNIFICANT' if c.errors_significant else 'not significant'},"
                    f" anytime p={anytime:.3g}"
                    f" {'SIGNIFICANT' if anytime < alpha else 'not significant'};"
                    f" latency p={c.latency_p:.3g}"
                    f" {'SIGNIFICANT' if c.latency_significant else 'not significant'}"
                )
            lines.append(
                f"  {arm_name:<16}{s.requests:>9}{s.failures:>8}  {rate:<26}"
                f"{_ms(s.p50):>9}{_ms(s.p95):>9}{_ms(s.p99):>9}   {verdict}"
            )
    return "\n".join(lines)


def to_json(report: Report, control: str, alpha: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "records": report.records,
        "unreadable": report.unreadable,
        "experiments": {},
    }
    for name, exp in sorted(report.experiments.items()):
        ctrl = _control(exp, control)
        out["experiments"][name] = {
            "control": ctrl,
            "arms": {a: asdict(acc.result()) for a, acc in sorted(exp.arms.items())},
            "comparisons": {
                a: {
                    **c.to_json(),
                    "anytime_error_p": (p := exp.anytime_p(a, ctrl)),
                    "errors_significant_anytime": p < alpha,
                }
                for a, c in comparisons(exp, ctrl, alpha).items()
            },
        }
    return out


def run(args: argparse.Namespace, out: TextIO) -> int:
    events = read_events(args.events) if args.events else []
    report = build_report(args.log, timeline=bool(args.png))
    if args.json:
        out.write(
            orjson.dumps(
                to_json(report, args.control, args.alpha), option=orjson.OPT_INDENT_2
            ).decode()
            + "\n"
        )
    else:
        out.write(render(report, args.control, args.alpha) + "\n")
    if args.png:
        from junction.als.plot import canary_chart

        services = canary_chart(args.png, events, report.timeline)
        if not args.json:
            if services:
                out.write(f"\ncanary chart ({', '.join(services)}) written to {args.png}\n")
            else:
                out.write(f"\nno canary events given (--events): {args.png} shows traffic only\n")
    return 0
