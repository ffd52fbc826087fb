"""Flattening Envoy's HTTPAccessLogEntry, and reading the decision tag."""

from __future__ import annotations

import orjson
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from junction.als.record import LogRecord, classify, records_from_entries
from junction.als.synthetic import Outcome, entry, message


def test_fields_of_a_proxied_request() -> None:
    msg = message(
        [
            Outcome(
                cluster="web-api-go",
                status=503,
                ms=12.5,
                decision="canary=go",
                version="go",
                start=1000.25,
            )
        ]
    )
    [r] = records_from_entries(msg.http_logs.log_entry, "node-7", now=5.0)
    assert r == LogRecord(
        t=1000.25, node="node-7", route="/api", cluster="web-api-go", status=503, ms=12.5,
        reset=False, method="GET", authority="example.com", path="/api/items/42?view=full",
        decision="canary=go", version="go",
    )  # fmt: skip
    assert r.failed
    assert orjson.loads(orjson.dumps(r))["cluster"] == "web-api-go"


def test_resets_and_missing_responses_are_failures() -> None:
    msg = message([Outcome(status=0, reset=True), Outcome(status=200), Outcome(status=404)])
    reset, ok, not_found = records_from_entries(msg.http_logs.log_entry, "n", now=0.0)
    assert (reset.status, reset.reset, reset.failed) == (0, True, True)
    assert (ok.reset, ok.failed) == (False, False)
    assert not not_found.failed


def test_an_empty_entry_reads_as_defaults() -> None:
    # Every field absent: no exception, start time taken from `now`.
    [r] = records_from_entries([accesslog_pb2.HTTPAccessLogEntry()], "", now=42.0)
    assert (r.t, r.status, r.ms, r.cluster, r.decision, r.method) == (42.0, 0, 0.0, "", "", "")


def test_duration_falls_back_to_last_downstream_byte() -> None:
    e = entry(Outcome(ms=3.0))
    e.common_properties.ClearField("duration")
    [r] = records_from_entries([e], "n", now=0.0)
    assert r.ms == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("", ("split", "")),
        ("route", ("split", "")),
        ("canary=go", ("split", "")),
        ("canary=perl", ("split", "")),
        ("pin=go", ("pin", "")),
        ("pin=go,fallback=perl", ("pin", "")),
        ("pin=go,rejected", ("pin", "")),
        ("exp=feed:treatment", ("exp", "feed:treatment")),
        ("exp=feed:control,canary=go", ("split", "feed:control")),
        ("exp=feed:control,route", ("split", "feed:control")),
        ("garbage,,=", ("split", "")),
        ("exp=nocolon", ("split", "")),
    ],
)
def test_classify(tag: str, expected: tuple[str, str]) -> None:
    assert classify(tag) == expected
