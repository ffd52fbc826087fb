"""The load-test harness's own logic (loadtest/scenarios): the loopback guard, weights,
share checks and the per-second timeline; and that both the runner and a locustfile refuse
a target outside loopback before sending anything. Fast: no stack is started."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "loadtest" / "scenarios"
sys.path.insert(0, str(SCENARIOS))

from _checks import (  # noqa: E402
    LoadTestError,
    RemoteTargetError,
    Timeline,
    parse_weights,
    require_loopback,
    share_check,
    shares,
)


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:8000", "127.0.0.1:9901", "http://localhost:8000", "http://[::1]:8000",
     "http://127.8.9.10/"],
)  # fmt: skip
def test_loopback_targets_pass(target: str) -> None:
    require_loopback(target, allow_remote=False)


@pytest.mark.parametrize(
    "target", ["http://10.0.0.5:8000", "192.168.1.1:9901", "http://[2001:db8::1]:80"]
)
def test_other_targets_are_refused_unless_allowed(target: str) -> None:
    with pytest.raises(RemoteTargetError, match="--allow-remote"):
        require_loopback(target, allow_remote=False, what="--host")
    require_loopback(target, allow_remote=True)


def test_a_target_without_a_host_is_an_error() -> None:
    with pytest.raises(LoadTestError, match="no host"):
        require_loopback("http://:8000", allow_remote=False)


def test_weights_are_relative_and_named() -> None:
    assert parse_weights("perl=90,go=10") == {"perl": 0.9, "go": 0.1}
    assert parse_weights("a=1, b=3") == {"a": 0.25, "b": 0.75}
    assert parse_weights("none") == {} and parse_weights("") == {}
    for bad, why in [("perl", "NAME=WEIGHT"), ("perl=x", "NAME=WEIGHT"), ("a=-1", "NAME=WEIGHT"),
                     ("a=1,a=2", "twice"), ("a=0,b=0", "add up to 0")]:  # fmt: skip
        with pytest.raises(LoadTestError, match=why):
            parse_weights(bad)


def test_a_share_check_passes_on_the_weights_and_fails_off_them() -> None:
    expected = {"perl": 0.9, "go": 0.1}
    good = shares("/api", {"perl": 905, "go": 95}, expected)
    assert share_check(good).ok
    # Tolerance: 4 standard errors of a share of 0.1 over 1000 requests, about 3.8 %.
    row = {r.key: r for r in good.rows}["go"]
    assert math.isclose(row.tolerance or 0, 4 * math.sqrt(0.09 / 1000))
    off = share_check(shares("/api", {"perl": 500, "go": 500}, expected))
    assert not off.ok and "go 50.0% (expected 10.0%" in off.detail
    # A cluster nobody expected fails the check even when the others look right.
    stray = share_check(shares("/api", {"perl": 900, "go": 99, "web-asset": 1}, expected))
    assert not stray.ok


def test_a_share_check_never_passes_on_too_few_samples() -> None:
    check = share_check(shares("/api", {"perl": 9, "go": 1}, {"perl": 0.9, "go": 0.1}))
    assert not check.ok and "only 10 requests" in check.detail


def test_shares_without_expectation_are_reported_only() -> None:
    s = shares("arms", {"a": 3, "b": 1})
    assert not s.checked and s.ok and [r.share for r in s.rows] == [0.75, 0.25]


def test_the_timeline_counts_by_the_second_a_request_started() -> None:
    t = Timeline(t0=1000.0)
    t.record(1000.2, 2.0, False, "web-api-perl", "/api")
    t.record(1000.9, 40.0, True, "web-api-go", "/api")
    t.record(1002.5, 3.0, False, None, "/asset", "x")
    rows = t.rows()
    assert [r["t"] for r in rows] == [0, 1, 2] and [r["requests"] for r in rows] == [2, 0, 1]
    assert rows[0]["cluster_failures"] == {"web-api-go": 1}
    assert rows[2]["clusters"] == {"(none)": 1} and rows[2]["groups"] == {"/asset": {"x": 1}}
    assert t.group_counts("/api") == {"web-api-perl": 1, "web-api-go": 1}
    assert t.failures_since(0.5) == (1, 0)  # second 1 on: the failure began in second 0
    totals = t.totals()
    assert totals["requests"] == 3 and totals["failures"] == 1
    assert totals["latency_ms"]["max"] == 40.0


def test_the_runner_refuses_a_remote_host_before_starting_anything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS / "run.py"), "migration", "--stack", "none",
         "--host", "http://10.255.0.1:8000", "--results", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "is not loopback" in proc.stderr and "--allow-remote" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_locustfile_refuses_a_remote_host(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(SCENARIOS / "migration.py"), "--headless",
         "--host", "http://10.255.0.1:8000", "--run-time", "1s", "-u", "1",
         "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--host 'http://10.255.0.1:8000' is not loopback" in proc.stderr
    assert not (tmp_path / "scenario.json").exists()
