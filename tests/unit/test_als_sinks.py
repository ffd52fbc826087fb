"""Sinks: JSON lines, size-based rotation, and the runner's bounded queue."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from junction.als.errors import SinkError
from junction.als.record import LogRecord
from junction.als.sinks import JsonLinesSink, RotatingFile, Sink, SinkRunner, rotated_paths


def rec(i: int) -> LogRecord:
    return LogRecord(float(i), "n", "/api", "go", 200, 1.5, False, "GET", "h", f"/p/{i}", "", "")


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_json_lines(tmp_path: Path) -> None:
    sink = JsonLinesSink(str(tmp_path / "logs" / "access.jsonl"))
    sink.write([rec(1), rec(2)])
    sink.close()
    rows = lines(tmp_path / "logs" / "access.jsonl")
    assert [r["path"] for r in rows] == ["/p/1", "/p/2"]
    assert set(rows[0]) == {
        "t",
        "node",
        "route",
        "cluster",
        "status",
        "ms",
        "reset",
        "method",
        "authority",
        "path",
        "decision",
        "version",
    }


def test_rotation_by_size_keeps_backups_and_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    one = len(orjson.dumps(rec(0))) + 1
    sink = JsonLinesSink(str(path), max_bytes=3 * one, backups=2)
    for i in range(10):
        sink.write([rec(2 * i), rec(2 * i + 1)])  # two lines per batch: at most one batch per file
    sink.close()
    assert sink.rotations == 9
    files = rotated_paths(str(path))
    assert [p.name for p in files] == ["a.jsonl.2", "a.jsonl.1", "a.jsonl"]
    assert [[r["path"] for r in lines(p)] for p in files] == [
        ["/p/14", "/p/15"],
        ["/p/16", "/p/17"],
        ["/p/18", "/p/19"],
    ]


def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    f = RotatingFile(str(path), max_bytes=10, backups=0)
    f.write(b"0123456789")
    f.write(b"abc\n")
    f.close()
    assert path.read_bytes() == b"abc\n"
    assert rotated_paths(str(path)) == [path]


def test_reopening_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    for i in range(2):
        sink = JsonLinesSink(str(path))
        sink.write([rec(i)])
        sink.close()
    assert len(lines(path)) == 2


def test_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sink = JsonLinesSink("-")
    sink.write([rec(3)])
    sink.close()
    assert orjson.loads(capsysbinary.readouterr().out)["path"] == "/p/3"


def test_unwritable_path_is_a_sink_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkError, match="file"):
        JsonLinesSink(str(tmp_path / "file" / "access.jsonl"))


class GatedSink(Sink):
    """Blocks in write() until released, like a stalled disk or broker."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def write(self, records: Sequence[LogRecord]) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(records))


class FailingSink(Sink):
    name = "failing"

    def write(self, records: Sequence[LogRecord]) -> None:
        raise SinkError("disk full")


def test_runner_drops_and_counts_when_the_queue_is_full() -> None:
    gated = GatedSink()
    runner = SinkRunner([gated], max_batches=2)
    runner.start()
    assert runner.submit([rec(0)])
    assert gated.entered.wait(5)  # the thread holds batch 0 in write()
    assert runner.submit([rec(1)]) and runner.submit([rec(2), rec(3)])
    assert not runner.submit([rec(4), rec(5), rec(6)])  # queue of 2 is full: dropped, counted
    assert runner.dropped == 3
    gated.gate.set()
    runner.close()
    assert gated.batches == [1, 1, 2]
    assert runner.written == 4


def test_a_failing_sink_is_counted_and_the_others_still_write(tmp_path: Path) -> None:
    good = JsonLinesSink(str(tmp_path / "a.jsonl"))
    runner = SinkRunner([FailingSink(), good])
    runner.start()
    runner.submit([rec(1)])
    runner.submit([rec(2)])
    runner.close()
    assert runner.errors == 2
    assert runner.status()["last_errors"] == {"failing": "disk full"}
    assert len(lines(tmp_path / "a.jsonl")) == 2
