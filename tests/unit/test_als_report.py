"""`junction report`: the statistics against known values, and the report over a written log."""

from __future__ import annotations

import argparse
import io
import math
import random
from pathlib import Path

import orjson
import pytest

from junction.als.errors import ReportError
from junction.als.record import LogRecord
from junction.als.report import build_report, read_events, run
from junction.als.sinks import JsonLinesSink
from junction.als.stats import ArmAccumulator, compare, mann_whitney, two_proportion_z, wilson


def test_wilson_interval() -> None:
    # Known value: 10 of 100 -> [0.0552, 0.1744] (Wilson 1927; e.g. Newcombe 1998, table I).
    low, high = wilson(10, 100)
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(0, 50)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.0 < high < 0.08


def test_two_proportion_z() -> None:
    # 0.20 of 500 vs 0.15 of 500: pooled 0.175, se = sqrt(.175*.825*(2/500)) = 0.024031...
    z, p = two_proportion_z(100, 500, 75, 500)
    assert z == pytest.approx(0.05 / math.sqrt(0.175 * 0.825 * 0.004))
    assert p == pytest.approx(0.0376, abs=5e-4)
    assert two_proportion_z(0, 100, 0, 100) == (0.0, 1.0)
    assert two_proportion_z(1, 0, 1, 10) == (0.0, 1.0)


def test_mann_whitney() -> None:
    rng = random.Random(3)
    a = [rng.gauss(10, 1) for _ in range(300)]
    assert mann_whitney(a, [rng.gauss(10, 1) for _ in range(300)]) > 0.01
    assert mann_whitney(a, [rng.gauss(11, 1) for _ in range(300)]) < 1e-6
    assert mann_whitney([], a) == 1.0


def test_reservoir_keeps_a_bounded_sample() -> None:
    acc = ArmAccumulator("a", sample=100)
    for i in range(10_000):
        acc.add(float(i), failed=i % 10 == 0)
    assert len(acc.latencies) == 100 and acc.requests == 10_000 and acc.failures == 1000
    # A uniform sample of 0..9999: its mean is near 5000.
    assert 3500 < sum(acc.latencies) / 100 < 6500
    s = acc.result()
    assert s.p50 is not None and abs(s.p50 - 5000) / 5000 < 0.02


def write_log(path: Path, rng: random.Random) -> None:
    sink = JsonLinesSink(str(path), max_bytes=200_000, backups=10)  # rotated: read back too
    records = []
    for i in range(6000):
        arm = "control" if i % 2 else "treatment"
        slow = arm == "treatment"
        failed = rng.random() < (0.06 if arm == "treatment" else 0.02)
        ms = rng.expovariate(1 / (14.0 if slow else 10.0))
        records.append(
            LogRecord(
                1000.0 + i * 0.01,
                "n",
                "/api",
                "web-api-go",
                500 if failed else 200,
                ms,
                False,
                "GET",
                "h",
                "/",
                f"exp=feed:{arm}",
                "",
            )
        )
        if i % 500 == 0:
            sink.write(records)
            records = []
    records.append(
        LogRecord(
            1000.0, "n", "/api", "web-api-perl", 200, 1.0, False, "GET", "h", "/", "pin=perl", ""
        )
    )
    sink.write(records)
    sink.close()
    with path.open("ab") as f:
        f.write(b"not json\n[1, 2]\n{}\n")


def test_report_over_a_rotated_log(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    write_log(log, random.Random(11))
    assert len(list(tmp_path.iterdir())) > 2  # it did rotate
    report = build_report([str(log)])
    assert report.records == 6001 and report.unreadable == 3
    exp = report.experiments["feed"]
    assert {a: acc.requests for a, acc in exp.arms.items()} == {"control": 3000, "treatment": 3000}
    c = compare(exp.arms["treatment"], exp.arms["control"])
    assert c.errors_significant and c.latency_significant
    assert c.error_diff is not None and 0.02 < c.error_diff < 0.06

    out = io.StringIO()
    args = argparse.Namespace(
        log=[str(log)], events=[], png=None, control="control", alpha=0.05, json=False
    )
    assert run(args, out) == 0
    text = out.getvalue()
    assert "experiment feed: control arm 'control'" in text
    assert "two-proportion z-test" in text and "Mann-Whitney U" in text
    treatment = next(line for line in text.splitlines() if line.strip().startswith("treatment"))
    assert "errors +" in treatment and treatment.count("SIGNIFICANT") == 3  # z, anytime, U
    assert "3 unreadable lines skipped" in text


def test_no_difference_is_not_significant(tmp_path: Path) -> None:
    rng = random.Random(6)  # fixed: one draw of two identical arms (p = 0.79 for latency)
    sink = JsonLinesSink(str(tmp_path / "a.jsonl"))
    sink.write([
        LogRecord(1.0, "n", "/", "c", 500 if rng.random() < 0.05 else 200, rng.expovariate(0.1), False, "GET", "h", "/", f"exp=x:{'control' if i % 2 else 'b'}", "")
        for i in range(4000)
    ])  # fmt: skip
    sink.close()
    out = io.StringIO()
    args = argparse.Namespace(
        log=[str(tmp_path / "a.jsonl")],
        events=[],
        png=None,
        control="control",
        alpha=0.05,
        json=True,
    )
    run(args, out)
    body = orjson.loads(out.getvalue())
    comp = body["experiments"]["x"]["comparisons"]["b"]
    assert not comp["errors_significant"] and not comp["latency_significant"]
    assert body["experiments"]["x"]["arms"]["control"]["requests"] == 2000


def test_png_of_a_canary(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    sink = JsonLinesSink(str(log))
    sink.write(
        [
            LogRecord(
                1000.0 + i,
                "n",
                "/api",
                c,
                500 if c == "go" and i > 30 else 200,
                2.0,
                False,
                "GET",
                "h",
                "/",
                "canary=x",
                "",
            )
            for i in range(60)
            for c in ("go", "perl")
        ]
    )
    sink.close()
    events = tmp_path / "events.jsonl"
    ev = {"baseline": {"cluster": "perl"}, "candidate": {"cluster": "go"}}
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in [
        {"at": 1000.0, "service": "web-api", "action": "start", "from_weight": 0, "to_weight": 10, "reason": ""},
        {"at": 1020.0, "service": "web-api", "action": "promote", "from_weight": 10, "to_weight": 50, "reason": "", "evidence": ev},
        {"at": 1040.0, "service": "web-api", "action": "rollback", "from_weight": 50, "to_weight": 0, "reason": "", "evidence": ev},
    ]))  # fmt: skip
    assert [e["action"] for e in read_events([str(events)])] == ["start", "promote", "rollback"]
    png = tmp_path / "canary.png"
    out = io.StringIO()
    args = argparse.Namespace(
        log=[str(log)],
        events=[str(events)],
        png=str(png),
        control="control",
        alpha=0.05,
        json=False,
    )
    assert run(args, out) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "canary chart (web-api) written" in out.getvalue()


def test_a_missing_log_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such file"):
        build_report([str(tmp_path / "nope.jsonl")])
