"""Smoke runs of the load-test scenarios (loadtest/scenarios) through the runner, against a
real stack (demo upstreams, ``junction up``, a real Envoy and the decision service).

Each run lasts a few seconds at a modest rate. They check that every scenario passes on a
stack that does what it should, FAILS (exit 1, the check named) on one that does not, that
the report is written (CSV, HTML, summary, PNGs), and that the report's counts agree with
Envoy's own stats for the same run. Nothing here is about speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "loadtest" / "scenarios"
sys.path.insert(0, str(SCENARIOS))

from _stack import DemoStack  # noqa: E402

pytestmark = pytest.mark.slow

#: A smoke run: long enough for share checks to have their 100 samples, short for CI.
SMOKE = ["--duration", "4", "--users", "10", "--rate", "150"]


def run(results: Path, *args: str, timeout: float = 100) -> tuple[int, dict[str, Any], str]:
    """The runner as a user runs it; returns its exit code, summary.json and output."""
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS / "run.py"), "--results", str(results), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    summary_path = results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return proc.returncode, summary, output


def checks(summary: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in summary["checks"]}


def assert_report(results: Path) -> None:
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv"):
        assert (results / name).read_text().startswith(("Type,", "Timestamp,", "Method,"))
    assert "<html" in (results / "locust.html").read_text()[:2000].lower()
    for png in ("throughput.png", "latency.png", "shares.png"):
        data = (results / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """The load-test stack (examples/loadtest.yaml) on free ports, shared by the runs that
    use ``--stack none``."""
    with DemoStack(
        ROOT / "examples" / "loadtest.yaml",
        ROOT / "examples" / "instances.yaml",
        tmp_path_factory.mktemp("stack"),
    ) as s:
        yield s


def against(stack: DemoStack) -> list[str]:
    return ["--stack", "none", "--host", stack.host, "--control", stack.control]


def envoy_stats(admin: str) -> dict[str, int]:
    """Envoy's counters, read here (not through the runner's code) to hold it to account."""
    query = urllib.parse.urlencode({"filter": r"downstream_rq_completed$|upstream_rq_total$"})
    with urllib.request.urlopen(f"http://{admin}/stats?{query}", timeout=5) as resp:
        text = resp.read().decode()
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+): (\d+)$", text, re.M)}


def test_migration_passes_and_agrees_with_envoy(stack: DemoStack, tmp_path: Path) -> None:
    admin = stack.envoy_admin()
    before = envoy_stats(admin)
    rc, summary, out = run(tmp_path, "migration", *SMOKE, *against(stack))
    after = envoy_stats(admin)
    assert rc == 0, out
    assert summary["ok"] and all(checks(summary).values())
    assert "== migration: PASS ==" in out and "[" in out  # the table and a progress line
    assert_report(tmp_path)

    # The summary's figures are Envoy's figures for the same run: total requests against
    # the listener's completed requests, and each version's requests against its cluster's
    # upstream requests. Tolerance: requests in flight at the edges of the run.
    def delta(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    tolerance = 10
    assert summary["requests"] > 300
    assert abs(delta("http.junction.downstream_rq_completed") - summary["requests"]) <= tolerance
    for cluster in ("web-api-perl", "web-api-go", "web-asset"):
        locust = summary["versions"][cluster]["requests"]
        assert abs(delta(f"cluster.{cluster}.upstream_rq_total") - locust) <= tolerance, cluster
    assert summary["envoy"]["downstream_rq_completed"] == pytest.approx(
        delta("http.junction.downstream_rq_completed"), abs=tolerance
    )
    # The shares, latency and rate are there to be read.
    api = summary["shares"]["/api"]["rows"]
    assert api["web-api-perl"]["expected"] == pytest.approx(0.9)
    assert 0.8 < api["web-api-perl"]["share"] < 1.0
    assert summary["rps"] > 0 and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0


def test_migration_fails_when_the_split_is_not_the_expected_one(
    stack: DemoStack, tmp_path: Path
) -> None:
    rc, summary, out = run(
        tmp_path, "migration", *SMOKE, *against(stack),
        "--", "--expect", "web-api-perl=50,web-api-go=50",
    )  # fmt: skip
    assert rc == 1, out
    verdicts = checks(summary)
    assert verdicts["/api: shares match the weights"] is False
    assert verdicts["failures within budget"] is True
    assert "== migration: FAIL ==" in out and "OFF" in out


def test_pinned_passes_when_every_pin_holds(stack: DemoStack, tmp_path: Path) -> None:
    rc, summary, out = run(tmp_path, "pinned", *SMOKE, *against(stack))
    assert rc == 0, out
    verdicts = checks(summary)
    assert verdicts["every header-pinned answer from its version"]
    assert verdicts["every cookie-pinned answer from its version"]
    assert summary["shares"]["pinned header go"]["rows"]["web-api-go"]["share"] == 1.0
    assert summary["shares"]["pinned cookie go"]["rows"]["web-api-go"]["count"] > 0
    assert summary["failures"] == 0


def test_experiments_keep_every_user_in_one_arm(stack: DemoStack, tmp_path: Path) -> None:
    rc, summary, out = run(tmp_path, "experiments", *SMOKE, *against(stack))
    assert rc == 0, out
    verdicts = checks(summary)
    assert verdicts["every user kept its arm"]
    assert verdicts["users per arm: shares match the weights"]
    users = summary["shares"]["users per arm"]
    assert users["total"] >= 100 and set(users["rows"]) == {"control", "treatment"}
    assert summary["extra"]["users_moved"] == 0


def test_pinned_fails_on_a_stack_that_does_not_honour_pins(tmp_path: Path) -> None:
    # No decision service: Envoy fails open to the plain 90/10 routes, so a pin is ignored.
    rc, summary, out = run(
        tmp_path, "pinned", *SMOKE, "--stack", "free", "--extproc-workers", "0", timeout=110
    )
    assert rc == 1, out
    verdicts = checks(summary)
    assert verdicts["every header-pinned answer from its version"] is False
    assert summary["failures"] > 0
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert "pinned to go by header, answered by 'web-api-perl'" in failures


def test_canary_with_a_fault_is_rolled_back(tmp_path: Path) -> None:
    # 15 s: the controller judges a second of logs once every Envoy has flushed it (about
    # 3 s after it began), and "no failures after the rollback" needs traffic after that.
    rc, summary, out = run(
        tmp_path, "canary", "--duration", "15", "--users", "10", "--rate", "150",
        "--stack", "free", timeout=110,
    )  # fmt: skip
    assert rc == 0, out
    verdicts = checks(summary)
    assert verdicts["the ramp ends rolled_back"]
    assert verdicts["the baseline (web-api-perl) served without failures"]
    assert any(name.startswith("no failures from") and ok for name, ok in verdicts.items())
    canary = summary["extra"]["canary"]
    assert canary["phase"] == "rolled_back" and canary["rollback_at"] >= 0
    assert canary["rollback"]["evidence"]["candidate"]["error_rate"] > 0.05
    # Locust's own error count: failures only on the candidate, and Envoy saw them too.
    errors = summary["extra"]["locust_errors"]
    assert errors["web-api-go"]["failures"] > 0 and errors["web-api-perl"]["failures"] == 0
    assert summary["failures"] == errors["web-api-go"]["failures"]
    assert abs(summary["envoy"]["downstream_rq_5xx"] - summary["failures"]) <= 2
    assert_report(tmp_path)


def test_canary_refuses_a_stack_without_a_ramp_and_sends_nothing(
    stack: DemoStack, tmp_path: Path
) -> None:
    admin = stack.envoy_admin()
    before = envoy_stats(admin)["http.junction.downstream_rq_completed"]
    rc, summary, out = run(tmp_path, "canary", *SMOKE, *against(stack))
    assert rc == 2, out
    assert "the stack has no canary ramp for web-api" in out
    assert summary["requests"] == 0 and not summary["ok"]
    assert envoy_stats(admin)["http.junction.downstream_rq_completed"] == before
