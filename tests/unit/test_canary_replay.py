"""`junction canary replay`: the live controller over written access logs, on their clock.

Logs are written by the file sink itself (JsonLinesSink, rotated), so the format replayed is
the format Junction writes."""

from __future__ import annotations

import asyncio
import io
import logging
import random
from pathlib import Path

import orjson
import pytest

from junction.als.logfile import BadLine, parse_record, read_log
from junction.als.record import LogRecord
from junction.als.sinks import JsonLinesSink
from junction.canary.replay import replay
from junction.cli import _parser, main
from junction.config.load import load_config

CONFIG_TEXT = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary: {version: go, weight: 10, ramp: {steps: [10, 50, 100], interval: 20}}
"""
CONFIG = load_config(CONFIG_TEXT, "c.yaml")
T0 = 1_767_225_600.0


def logged(
    seconds: float, *, go_error: float, perl_error: float = 0.01, rps: int = 200, seed: int = 7
) -> list[LogRecord]:
    """Traffic as it was logged: 10 % to the candidate, errors Bernoulli per request,
    written in end order (as the receiver gets them)."""
    rng = random.Random(seed)
    out = []
    for i in range(int(seconds * rps)):
        t = T0 + i / rps
        go = rng.random() < 0.10
        bad = rng.random() < (go_error if go else perl_error)
        out.append(
            LogRecord(
                t,
                "node-1",
                "/api",
                "web-api-go" if go else "web-api-perl",
                503 if bad else 200,
                rng.uniform(2.0, 40.0),
                False,
                "GET",
                "example.com",
                "/api/x",
                "canary=go" if go else "",
                "go" if go else "perl",
            )
        )
    out.sort(key=lambda r: r.t + r.ms / 1000)
    return out


def write_log(path: Path, records: list[LogRecord], *, max_bytes: int = 100 << 20) -> None:
    sink = JsonLinesSink(str(path), max_bytes=max_bytes, backups=50)
    for i in range(0, len(records), 100):  # batches, like the receiver's worker
        sink.write(records[i : i + 100])
    sink.close()


def decisions(path: Path, *extra: str) -> tuple[int, list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    from junction.canary.offline_cli import run_replay

    args = _parser().parse_args(
        [
            "canary",
            "replay",
            "-c",
            str(path.parent / "c.yaml"),
            "--log",
            str(path),
            "--json",
            *extra,
        ]
    )
    rc = run_replay(args, out, err)
    return rc, [orjson.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG_TEXT)
    return path


def test_a_bad_candidate_is_rolled_back_on_the_logs_clock(
    tmp_path: Path, config_file: Path
) -> None:
    log = tmp_path / "access.jsonl"
    records = logged(60, go_error=0.30)
    write_log(log, records)
    rc, events, _ = decisions(log)
    assert rc == 0
    start = records[0].t
    assert events[0]["action"] == "start" and events[0]["at"] == start  # the first record
    assert events[0]["to_weight"] == 10
    rollbacks = [e for e in events if e["action"] == "rollback"]
    assert len(rollbacks) == 1
    rb = rollbacks[0]
    assert rb["service"] == "web-api" and rb["from_weight"] == 10 and rb["to_weight"] == 0
    # Decided at a tick of the log's clock, within the log, with its evidence.
    assert start < float(rb["at"]) <= start + 60  # type: ignore[arg-type]
    assert (float(rb["at"]) - start) / 0.5 == pytest.approx(round((float(rb["at"]) - start) / 0.5))  # type: ignore[arg-type]
    assert rb["reason"] and rb["evidence"]
    for e in events:
        assert {"service", "action", "from_weight", "to_weight", "at", "reason"} <= set(e)


def test_replay_is_deterministic_and_rotation_does_not_change_it(
    tmp_path: Path, config_file: Path
) -> None:
    records = logged(90, go_error=0.01)
    one = tmp_path / "one.jsonl"
    write_log(one, records)
    rotated = tmp_path / "rot.jsonl"
    write_log(rotated, records, max_bytes=200_000)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("rot.jsonl"))
    assert len(files) >= 5  # really rotated: rot.jsonl, rot.jsonl.1, ...
    first = decisions(one)
    assert first[0] == 0 and len(first[1]) >= 2  # a start and at least one decision
    # Replay judges the traffic as logged (a 10 % split): once it promotes to 50 %, the
    # sample-ratio check sees the split disagree and holds, saying why.
    assert [e["action"] for e in first[1][:2]] == ["start", "promote"]
    assert any(
        e["action"] == "inconclusive" and "sample ratio" in str(e["reason"]) for e in first[1]
    )
    assert decisions(one) == first
    rc, events, err = decisions(rotated)
    assert rc == 0
    assert events == first[1]
    assert f"replayed {len(records)} records from {len(files)} file(s)" in err


def test_rotated_files_are_read_oldest_first(tmp_path: Path) -> None:
    records = logged(30, go_error=0.0)
    path = tmp_path / "access.jsonl"
    write_log(path, records, max_bytes=50_000)
    read = [r for r in read_log([str(path)]) if isinstance(r, LogRecord)]
    assert read == records


def test_malformed_lines_are_named_counted_and_skipped(tmp_path: Path, config_file: Path) -> None:
    log = tmp_path / "access.jsonl"
    write_log(log, logged(60, go_error=0.30))
    lines = log.read_bytes().splitlines(keepends=True)
    bad = [
        b'{"t": 1767225600.5, "node": "n", "cluster": "web-api-go", "sta\n',  # torn write
        b'["not", "an", "object"]\n',
        b'{"t": "yesterday", "ms": 1, "status": 200, "cluster": "web-api-go"}\n',
        b'{"t": 1767225601, "ms": 1, "status": 200}\n',
    ]
    # Lines 3, 5, 7, 9 of the file (1-based) become bad ones; a blank line is not counted.
    for i, line in enumerate(bad):
        lines.insert(2 + 2 * i, line)
    lines.insert(1, b"\n")
    log.write_bytes(b"".join(lines))
    rc, events, err = decisions(log)
    assert rc == 0
    assert any(e["action"] == "rollback" for e in events)  # the rest was still judged
    for number, what in (
        (4, "not JSON"),
        (6, "expected a JSON object, got list"),
        (8, "'t' must be a number"),
        (10, "'cluster' must be a non-empty"),
    ):
        assert f"{log}:{number}: {what}" in err, err
    assert "(4 malformed lines skipped)" in err
    assert "Traceback" not in err


def test_text_output_prints_each_decision_with_its_evidence(
    tmp_path: Path,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = tmp_path / "access.jsonl"
    write_log(log, logged(60, go_error=0.30))
    caplog.set_level(logging.INFO)  # as `junction --log-level info` (the default)
    rc = main(["canary", "replay", "-c", str(config_file), "--log", str(log)])
    out = capsys.readouterr().out
    assert rc == 0
    # The decisions are printed once: the controller's own info log is quiet offline.
    assert not [r for r in caplog.records if r.name == "junction.canary"]
    assert logging.getLogger("junction.canary").level == logging.NOTSET  # restored
    assert "2026-01-01T00:00:00.010Z web-api start 0% -> 10%: ramp started" in out
    assert "web-api rollback 10% -> 0%" in out
    assert "\n  evidence: {" in out
    assert "web-api: rolled_back at 0%" in out


def test_missing_log_or_bad_config_exit_1_naming_it(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["canary", "replay", "-c", str(config_file), "--log", str(tmp_path / "nope")])
    assert rc == 1
    assert f"{tmp_path / 'nope'}: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG_TEXT.replace("interval: 20", "interval: -3"))
    log = tmp_path / "a.jsonl"
    write_log(log, logged(1, go_error=0.0))
    assert main(["canary", "replay", "-c", str(bad), "--log", str(log)]) == 1
    assert "interval" in capsys.readouterr().err


def test_an_empty_log_decides_nothing(tmp_path: Path) -> None:
    result = asyncio.run(replay(CONFIG, iter([])))
    assert result.events == [] and result.records == 0 and result.start is None


def test_parse_record_names_the_field() -> None:
    good = {"t": 1.0, "ms": 2.0, "status": 200, "cluster": "c"}
    assert parse_record(good).cluster == "c"
    for change, what in (
        ({"status": True}, "'status'"),
        ({"ms": -1}, "'ms' must be >= 0"),
        ({"reset": "yes"}, "'reset'"),
        ({"route": 3}, "'route'"),
    ):
        with pytest.raises(ValueError, match=what):
            parse_record({**good, **change})
    assert str(BadLine("a.jsonl", 3, "not JSON")) == "a.jsonl:3: not JSON"
