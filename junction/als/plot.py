"""The canary chart of ``junction report --png``: weight and error rates over time.

Per canaried service, two panels sharing the time axis: the candidate's weight (a step
line through the controller's events, rollbacks and operator commands marked) and the
error rate of its baseline and candidate clusters per time bin (from the access log). With
no events, one panel of every cluster's error rate. Drawn with matplotlib's Agg backend
(no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

__all__ = ["canary_chart"]


def _bins(
    timeline: Sequence[tuple[float, str, bool]], start: float, end: float, clusters: set[str]
) -> tuple[list[float], dict[str, list[float | None]]]:
    width = max(1.0, (end - start) / 60)
    n = max(1, int((end - start) // width) + 1)
    total: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    failed: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    for t, cluster, bad in timeline:
        if cluster not in clusters or not start <= t <= end:
            continue
        i = min(n - 1, int((t - start) // width))
        total[cluster][i] += 1
        failed[cluster][i] += bad
    xs = [(i + 0.5) * width for i in range(n)]
    rates = {
        c: [failed[c][i] / total[c][i] * 100 if total[c][i] else None for i in range(n)]
        for c in sorted(clusters)
    }
    return xs, rates


def canary_chart(
    path: str, events: Sequence[dict[str, Any]], timeline: Sequence[tuple[float, str, bool]]
) -> list[str]:
    """Write the PNG; returns the services drawn (empty: no events, traffic only).
    (Over 60 lines: one figure's layout, panel by panel, reads best in one place.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_service[str(e["service"])].append(e)
    times = [t for t, _, _ in timeline] + [float(e["at"]) for e in events]
    start = min(times, default=0.0)
    end = max(times, default=1.0)
    services = sorted(by_service)
    rows = max(1, len(services))
    fig, axes = plt.subplots(
        2 * rows if services else 1, 1, figsize=(10, 3.2 * (2 * rows if services else 1)),
        sharex=True, squeeze=False,
    )  # fmt: skip
    if not services:
        xs, rates = _bins(timeline, start, end, {c for _, c, _ in timeline})
        ax = axes[0][0]
        for cluster, ys in rates.items():
            ax.plot(xs, ys, marker=".", label=cluster)
        ax.set_ylabel("error rate (%)")
        ax.set_xlabel("seconds")
        ax.legend(loc="upper right")
        ax.set_title("error rate per cluster")
    for row, service in enumerate(services):
        evs = by_service[service]
        clusters: set[str] = set()
        for e in evs:
            ev = e.get("evidence") or {}
            for side in ("baseline", "candidate"):
                if isinstance(ev.get(side), dict) and ev[side].get("cluster"):
                    clusters.add(str(ev[side]["cluster"]))
        wx = [float(evs[0]["at"]) - start] + [float(e["at"]) - start for e in evs]
        wy = [float(evs[0]["from_weight"])] + [float(e["to_weight"]) for e in evs]
        wx.append(end - start)
        wy.append(wy[-1])
        ax = axes[2 * row][0]
        ax.step(wx, wy, where="post", color="tab:blue")
        for e in evs:
            if e["action"] in ("rollback", "abort", "pause", "resume", "promote"):
                color = {"rollback": "tab:red", "abort": "tab:red"}.get(e["action"], "tab:green")
                if e["action"] in ("rollback", "abort"):
                    ax.axvline(float(e["at"]) - start, color=color, linestyle="--", alpha=0.6)
        ax.set_ylim(-5, 105)
        ax.set_ylabel("candidate weight (%)")
        ax.set_title(f"{service}: canary weight")
        ax2 = axes[2 * row + 1][0]
        if clusters:
            xs, rates = _bins(timeline, start, end, clusters)
            for cluster, ys in rates.items():
                ax2.plot(xs, ys, marker=".", label=cluster)
            ax2.legend(loc="upper right")
        ax2.set_ylabel("error rate (%)")
        ax2.set_title(f"{service}: error rate per cluster")
    axes[-1][0].set_xlabel("seconds since the first event or request")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return services
