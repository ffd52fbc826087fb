"""The report of one load-test run: the summary JSON, the table printed at the end, the PNG
plots, and the Envoy counters the figures are held against.

Inputs are files the run left in its results folder (``scenario.json`` from the locustfile,
``locust_stats.csv`` from Locust) and two readings of Envoy's admin ``/stats``, before and
after. Nothing here drives load.
"""

from __future__ import annotations

import csv
import re
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _checks import NO_UPSTREAM, Check

__all__ = ["build_summary", "envoy_counters", "format_table", "plot"]

#: Envoy counters read before and after a run: requests the listener's HTTP connection
#: manager completed (its stat prefix is ``junction``, see junction/xds/translate.py), its
#: 5xx, and requests sent to each cluster (health checks are not counted there).
_STATS = (
    r"^(http\.{prefix}\.downstream_rq_completed|http\.{prefix}\.downstream_rq_5xx"
    r"|cluster\.[^.]+\.upstream_rq_total)$"
)
#: Clusters of Junction's own plumbing (xDS, ALS, ext_proc): not application traffic.
_PLUMBING = re.compile(r"^junction_")


def envoy_counters(
    admin: str, stat_prefix: str = "junction", timeout: float = 5.0
) -> dict[str, int]:
    """The counters of :data:`_STATS` from Envoy's admin at ``HOST:PORT``, in its text
    format, ``name: value`` a line (Envoy docs, operations/admin, ``GET /stats``)."""
    query = urllib.parse.urlencode({"filter": _STATS.format(prefix=re.escape(stat_prefix))})
    with urllib.request.urlopen(f"http://{admin}/stats?{query}", timeout=timeout) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def _envoy_section(
    before: dict[str, int],
    after: dict[str, int],
    *,
    admin: str,
    stat_prefix: str,
    locust_requests: int,
    by_cluster: dict[str, int],
    users: int,
) -> tuple[dict[str, Any], Check]:
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    completed = delta.get(f"http.{stat_prefix}.downstream_rq_completed", 0)
    clusters = {}
    for key, value in sorted(delta.items()):
        m = re.match(r"^cluster\.([^.]+)\.upstream_rq_total$", key)
        if m and not _PLUMBING.match(m.group(1)) and (value or by_cluster.get(m.group(1))):
            clusters[m.group(1)] = {"envoy": value, "locust": by_cluster.get(m.group(1), 0)}
    # Requests outside the run: in flight when Locust stopped its users (at most one per
    # user), or sent by something else meanwhile. Beyond that, the figures disagree.
    tolerance = max(5, users, round(0.005 * locust_requests))
    difference = completed - locust_requests
    section = {
        "admin": admin,
        "downstream_rq_completed": completed,
        "downstream_rq_5xx": delta.get(f"http.{stat_prefix}.downstream_rq_5xx", 0),
        "upstream_rq_total": clusters,
        "locust_requests": locust_requests,
        "difference": difference,
        "tolerance": tolerance,
    }
    worst = max([abs(difference)] + [abs(c["envoy"] - c["locust"]) for c in clusters.values()])
    check = Check(
        "Locust's counts agree with Envoy's stats",
        worst <= tolerance,
        f"Envoy http.{stat_prefix}.downstream_rq_completed +{completed}, Locust {locust_requests}"
        f" (difference {difference:+d}); per cluster "
        + ", ".join(f"{c} {v['envoy']}/{v['locust']}" for c, v in clusters.items())
        + f" (Envoy/Locust); allowed ±{tolerance}",
    )
    return section, check


def _locust_csv(path: Path) -> dict[str, Any] | None:
    """Locust's own Aggregated row (its percentiles are rounded to whole ms below 100 ms)."""
    if not path.exists():
        return None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                return {
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": _number(row["Requests/s"]),
                    "p50_ms": _number(row["50%"]),
                    "p95_ms": _number(row["95%"]),
                    "p99_ms": _number(row["99%"]),
                    "max_ms": _number(row["Max Response Time"]),
                }
    return None


def _number(text: str) -> float | None:
    """Locust writes ``N/A`` where there were no requests."""
    try:
        return float(text)
    except ValueError:
        return None


def build_summary(
    scenario: dict[str, Any],
    *,
    results: Path,
    command: str,
    envoy_before: dict[str, int] | None = None,
    envoy_after: dict[str, int] | None = None,
    envoy_admin: str | None = None,
    stat_prefix: str = "junction",
) -> dict[str, Any]:
    """The summary of a run (summary.json): totals, latency, per-version shares, checks."""
    totals = scenario["totals"]
    requests, failures = totals["requests"], totals["failures"]
    duration = scenario.get("duration_s") or 0.0
    clusters = totals["clusters"]
    served = sum(n for c, n in clusters.items() if c != NO_UPSTREAM)
    versions = {
        c: {
            "requests": n,
            "share": n / served if served and c != NO_UPSTREAM else None,
            "failures": totals["cluster_failures"].get(c, 0),
        }
        for c, n in sorted(clusters.items(), key=lambda kv: -kv[1])
    }
    checks = list(scenario["checks"])
    envoy = None
    if envoy_before is not None and envoy_after is not None and envoy_admin:
        envoy, check = _envoy_section(
            envoy_before,
            envoy_after,
            admin=envoy_admin,
            stat_prefix=stat_prefix,
            locust_requests=scenario["locust"]["requests"],
            by_cluster=clusters,
            users=int(scenario["options"]["users"] or 1),
        )
        checks.append(check.to_json())
    summary = {
        "scenario": scenario["scenario"],
        "ok": all(c["ok"] for c in checks) and bool(checks),
        "started": datetime.fromtimestamp(scenario["t0"], UTC).isoformat(timespec="seconds"),
        "command": command,
        "results": str(results),
        "target": scenario["options"],
        "stopped_by": scenario["stopped_by"],
        "duration_s": duration,
        "requests": requests,
        "failures": failures,
        "failure_rate": failures / requests if requests else 0.0,
        "rps": requests / duration if duration else 0.0,
        "latency_ms": totals["latency_ms"],
        "versions": versions,
        "shares": scenario["shares"],
        "checks": checks,
        "envoy": envoy,
        "locust": _locust_csv(results / "locust_stats.csv"),
        "extra": scenario.get("extra", {}),
        "files": sorted(p.name for p in results.iterdir() if p.is_file()),
    }
    return summary


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f} %"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _single(s: dict[str, Any]) -> str | None:
    """The key of a group that expects all its answers from one cluster (a pin, /asset)."""
    expected = [k for k, r in s["rows"].items() if r["expected"] is not None]
    if len(expected) == 1 and s["rows"][expected[0]]["expected"] == 1.0:
        return str(expected[0])
    return None


def _row_order(item: tuple[str, dict[str, Any]]) -> tuple[float, int]:
    """Expected shares first (largest first), then by count."""
    return (-(item[1]["expected"] or 0.0), -item[1]["count"])


def format_table(summary: dict[str, Any]) -> str:
    """The summary as the table printed at the end of a run."""
    t = summary["target"]
    lat = summary["latency_ms"]
    verdict = "PASS" if summary["ok"] else "FAIL"
    rate = f"{t['rate']:g} req/s target" if t["rate"] else "unpaced"
    lines = [
        f"== {summary['scenario']}: {verdict} ==  ({summary['results']})",
        f"   {t['host']} (Host: {t['host_header']}), {t['users']} users, {rate}, "
        f"{summary['duration_s']:.1f} s (stopped by {summary['stopped_by']})",
        "",
        f"   {'requests':>10} {'req/s':>9} {'failures':>16} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}",
        f"   {summary['requests']:>10,} {summary['rps']:>9.1f} "
        f"{summary['failures']:>7,} ({100 * summary['failure_rate']:5.2f} %) "
        f"{_ms(lat['p50']):>8} {_ms(lat['p95']):>8} {_ms(lat['p99']):>8} {_ms(lat.get('max')):>8}",
        "",
        f"   {'served by (x-upstream-service)':<32} {'requests':>10} {'share':>8} {'failures':>9}",
    ]
    for cluster, v in summary["versions"].items():
        lines.append(
            f"   {cluster:<32} {v['requests']:>10,} {_pct(v['share']):>8} {v['failures']:>9,}"
        )
    single = {g: s for g, s in summary["shares"].items() if _single(s) is not None}
    if single:
        lines += ["", "   answered by the one cluster expected"]
        for group, s in single.items():
            key = _single(s)
            r = s["rows"][key]
            verdict = "ok" if all(x["ok"] for x in s["rows"].values()) else "OFF"
            lines.append(
                f"     {group:<22} -> {key:<16} {r['count']:>8,} of {s['total']:<8,} "
                f"{_pct(r['share']):>8}  {verdict}"
            )
    for group, s in summary["shares"].items():
        if group in single:
            continue
        unit = s["unit"]
        mark = "checked" if s["checked"] else "reported, not checked"
        lines += ["", f"   {group}: {s['total']:,} {unit} ({mark})"]
        lines.append(f"     {'':<30} {unit:>10} {'share':>8} {'expected':>20}")
        for key, r in sorted(s["rows"].items(), key=_row_order):
            expected = ""
            if r["expected"] is not None:
                expected = f"{_pct(r['expected'])} ± {100 * r['tolerance']:.1f}"
            verdict = ("ok" if r["ok"] else "OFF") if s["checked"] else ""
            lines.append(
                f"     {key:<30} {r['count']:>10,} {_pct(r['share']):>8} {expected:>20}  {verdict}"
            )
    canary = summary["extra"].get("canary")
    if canary:
        states = " -> ".join(f"{w}% {p} at {t:.0f} s" for t, w, p in canary["states"])
        lines += [
            "",
            f"   canary {canary['candidate']} vs {canary['baseline']} (polled): {states}",
        ]
        rb = canary.get("rollback")
        if rb and rb.get("evidence"):
            cand = rb["evidence"].get("candidate") or {}
            lines.append(
                f"   controller's evidence: {cand.get('requests')} requests to the candidate, "
                f"error rate {_pct(cand.get('error_rate'))}"
            )
    envoy = summary.get("envoy")
    if envoy:
        lines += [
            "",
            f"   Envoy ({envoy['admin']}): {envoy['downstream_rq_completed']:,} requests "
            f"completed, {envoy['downstream_rq_5xx']:,} 5xx; Locust {envoy['locust_requests']:,}"
            f" (difference {envoy['difference']:+d})",
        ]
    cores = summary.get("locust_cpu_cores")
    if cores is not None:
        bound = (
            "  (near 1: the load generator, not the stack, set the pace)" if cores > 0.85 else ""
        )
        lines += ["", f"   Locust used {cores:.2f} of a core{bound}"]
    lines += ["", "   checks"]
    for c in summary["checks"]:
        lines.append(f"   {'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
    lines += ["", f"   files: {', '.join(summary['files'])}"]
    return "\n".join(lines)


# ---- plots ----------------------------------------------------------------------------


def plot(summary: dict[str, Any], scenario: dict[str, Any], out: Path) -> list[Path]:
    """throughput.png, latency.png and shares.png in ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = scenario["timeline"]
    duration = summary["duration_s"] or 0.0
    # The last second is cut short by the stop: its count would read as a drop in rate.
    if len(rows) > 1 and rows[-1]["t"] + 1 > duration + 0.05:
        rows = rows[:-1]
    if not rows:
        return []
    # A second's figures are plotted at its middle.
    t = [r["t"] + 0.5 for r in rows]
    name = summary["scenario"]
    target = summary["target"]
    canary = summary["extra"].get("canary")
    written = []

    color = _Colors()
    for cluster in sorted(summary["versions"]):
        color(cluster)  # by name first: a version keeps its colour from one run to the next
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(t, [r["requests"] for r in rows], color="black", lw=2, label="all requests")
    clusters = [c for c in summary["versions"] if c != NO_UPSTREAM]
    for c in clusters:
        ax.plot(
            t,
            [r["clusters"].get(c, 0) for r in rows],
            lw=1.2,
            color=color(c),
            label=f"served by {c}",
        )
    fails = [r["failures"] for r in rows]
    if any(fails):
        ax.plot(t, fails, color="red", lw=1.5, label="failures")
    if target["rate"]:
        ax.axhline(target["rate"], color="grey", ls="--", lw=1, label="target rate")
    _rollback_line(ax, canary)
    ax.set(
        xlabel="seconds since start",
        ylabel="requests per second",
        title=f"{name}: throughput ({target['users']} users)",
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend(ax)
    written.append(_save(fig, out / "throughput.png"))

    fig, ax = plt.subplots(figsize=(11, 4.5))
    for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        ax.plot(t, [r["latency_ms"][q] for r in rows], ls=style, lw=1.6, label=q)
    _rollback_line(ax, canary)
    ax.set(
        xlabel="seconds since start",
        ylabel="ms (per second of requests)",
        title=f"{name}: latency as Locust saw it",
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend(ax)
    written.append(_save(fig, out / "latency.png"))

    panels = _share_panels(summary, rows)
    if panels:
        height = max(4.5, 3.3 * len(panels))
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, height), squeeze=False)
        for ax, (title, series) in zip(axes[:, 0], panels, strict=True):
            for i, (label, per_second, cumulative, expected) in enumerate(series):
                c = color(label)
                # Lines that should coincide (all at 100 %) are drawn wide to thin, so that
                # each stays visible under the next.
                width = 2 + 1.5 * (len(series) - 1 - i) if title == _SINGLE else 2
                ax.plot(t, per_second, lw=0.8, alpha=0.45, color=c)
                ax.plot(t, cumulative, lw=width, color=c, label=f"{label} (cumulative)")
                if expected is not None:
                    ax.axhline(
                        100 * expected,
                        color=c,
                        ls="--",
                        lw=1,
                        label=f"{label} expected {100 * expected:g} %",
                    )
            if canary and title.startswith("/api"):
                steps = _weights(canary, scenario["t0"])
                if steps:
                    ax.step(
                        [x for x, _ in steps] + [t[-1] + 0.5],
                        [w for _, w in steps] + [steps[-1][1]],
                        where="post",
                        color="black",
                        lw=1.5,
                        label=f"controller's weight of {canary['candidate']}",
                    )
                _rollback_line(ax, canary)
            ax.set(ylabel="%", title=title, ylim=(-2, 102))
            ax.grid(alpha=0.3)
            _legend(ax)
        axes[-1, 0].set_xlabel("seconds since start (thin lines: each second on its own)")
        fig.suptitle(f"{name}: who served", fontsize=11)
        written.append(_save(fig, out / "shares.png"))
    return written


_SINGLE = "answered by the one cluster expected (should stay at 100 %)"


def _share_panels(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[str, list]]:  # type: ignore[type-arg]
    """Per group of the timeline: each label's share per second and cumulated, expected.

    Groups that expect a single answer (a pinned version, /asset) share one panel: the
    share from the expected cluster, which should stay at 100 %.
    """
    shares = summary["shares"]
    panels: list[tuple[str, list]] = []  # type: ignore[type-arg]
    single: list = []  # type: ignore[type-arg]
    groups = sorted({g for r in rows for g in r["groups"]})
    for group in groups:
        info = shares.get(group, {})
        rows_info = info.get("rows", {})
        expected = {k: v["expected"] for k, v in rows_info.items() if v["expected"] is not None}
        labels = sorted({lab for r in rows for lab in r["groups"].get(group, {})} | set(expected))
        series = []
        for label in labels:
            per, cum = [], []
            seen = hits = 0
            for r in rows:
                counts = r["groups"].get(group, {})
                n = sum(counts.values())
                k = counts.get(label, 0)
                seen, hits = seen + n, hits + k
                per.append(100 * k / n if n else float("nan"))
                cum.append(100 * hits / seen if seen else float("nan"))
            series.append((label, per, cum, expected.get(label)))
        if len(expected) == 1 and next(iter(expected.values())) == 1.0:
            label = next(iter(expected))
            single += [(f"{group} -> {lab}", p, c, None) for lab, p, c, _ in series if lab == label]
        else:
            unit = info.get("unit", "requests")
            panels.append((f"{group}: share of {unit}", series))
    if single:
        panels.append((_SINGLE, single))
    return panels


class _Colors:
    """One colour per cluster or arm, the same in every plot of a run."""

    def __init__(self) -> None:
        self._given: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        if key not in self._given:
            self._given[key] = f"C{len(self._given) % 10}"
        return self._given[key]


def _legend(ax: Any) -> None:
    # Outside the axes: lines near 0 % and 100 % (and near 0 req/s) stay visible.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)


def _weights(canary: dict[str, Any], t0: float) -> list[tuple[float, int]]:
    """The candidate's weight over the run: as first read, then at each of the controller's
    events (their own timestamps, not the 0.5 s polls)."""
    states = canary.get("states") or []
    if not states:
        return []
    steps = [(0.0, int(states[0][1]))]
    for e in canary.get("events") or []:
        at = e["at"] - t0
        if at >= 0 and e.get("to_weight") is not None:
            steps.append((at, int(e["to_weight"])))
    return steps


def _rollback_line(ax: Any, canary: dict[str, Any] | None) -> None:
    if canary and canary.get("rollback_at") is not None and canary["rollback_at"] >= 0:
        ax.axvline(canary["rollback_at"], color="red", ls="-.", lw=1.2, label="rollback")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
