"""The metrics collectors, read through prometheus_client's own parser.

Each collector is fed the plain data its service serves on /status, /als or /stats (or
the xDS events the server hands it), rendered with ``generate_latest`` and parsed back, so a
name, type or label that breaks the exposition format fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from junction.als.metrics import AlsMetrics
from junction.canary.metrics import CanaryMetrics
from junction.canary.state import CanaryEvent, CanaryState, Phase
from junction.extproc.counters import (
    ANSWER_BUCKETS,
    COUNTER_NAMES,
    AnswerTimes,
    Counters,
    SharedCounters,
    answer_json,
)
from junction.extproc.metrics import FAMILIES, ExtprocMetrics
from junction.metrics import OTHER, BoundedLabel
from junction.xds.metrics import XdsMetrics
from junction.xds.protocol import Ack, Connected, Disconnected, Nack, Sent, StaleNonce, StreamKind
from junction.xds.publisher import PublishTiming
from junction.xds.resources import CLUSTER, LISTENER

COUNTERS_NONE = Counters()


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (sample name, sorted labels)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def xds(status: dict[str, Any] | None = None) -> tuple[CollectorRegistry, XdsMetrics, Clock]:
    registry, clock = CollectorRegistry(), Clock()
    metrics = XdsMetrics(
        registry, status=lambda: status or {}, nodes=lambda: [], clock=clock, node_limit=4
    )
    return registry, metrics, clock


ADS = StreamKind(delta=False)
DELTA = StreamKind(delta=True)


def sent(type_url: str, nonce: str) -> Sent:
    return Sent(type_url, "v1", nonce, resources=1, removed=0, restore=False)


def nack(type_url: str, nonce: str) -> Nack:
    return Nack(type_url, "v1", nonce, "bad", origin="f", config_version="c", kept_version="")


def test_push_to_ack_latency_is_observed_from_the_send_to_the_answer_with_its_nonce() -> None:
    registry, metrics, clock = xds()
    metrics.observe("n1", ADS, 1, [Connected("n1", ADS), sent(CLUSTER, "a")])
    clock.now += 0.03
    metrics.observe("n1", ADS, 1, [Ack(CLUSTER, "v1", "a")])
    metrics.observe("n1", ADS, 1, [sent(LISTENER, "b")])
    clock.now += 2.0
    metrics.observe("n1", ADS, 1, [nack(LISTENER, "b"), Ack(LISTENER, "v1", "stale")])
    s = scrape(registry)
    assert value(s, "junction_xds_push_ack_seconds_count", type="Cluster") == 1
    assert value(s, "junction_xds_push_ack_seconds_sum", type="Cluster") == pytest.approx(0.03)
    assert value(s, "junction_xds_push_ack_seconds_bucket", type="Cluster", le="0.025") == 0
    assert value(s, "junction_xds_push_ack_seconds_bucket", type="Cluster", le="0.05") == 1
    # The NACK answered the listener push; the later request with an old nonce did not.
    assert value(s, "junction_xds_push_ack_seconds_count", type="Listener") == 1
    assert value(s, "junction_xds_push_ack_seconds_sum", type="Listener") == pytest.approx(2.0)
    assert value(s, "junction_xds_acks_total", type="Cluster", node="n1") == 1
    assert value(s, "junction_xds_acks_total", type="Listener", node="n1") == 1
    assert value(s, "junction_xds_nacks_total", type="Listener", node="n1") == 1
    assert value(s, "junction_xds_responses_total", type="Cluster", transport="sotw") == 1
    assert value(s, "junction_xds_streams_total", transport="sotw") == 1


def test_a_closed_stream_forgets_its_unanswered_pushes() -> None:
    registry, metrics, clock = xds()
    metrics.observe("n1", DELTA, 7, [sent(CLUSTER, "a")])
    metrics.observe("n1", DELTA, 7, [Disconnected("n1", DELTA)])
    clock.now += 1
    metrics.observe("n1", DELTA, 7, [Ack(CLUSTER, "v1", "a")])  # a reused id: not that push
    s = scrape(registry)
    assert ("junction_xds_push_ack_seconds_count", (("type", "Cluster"),)) not in s
    assert value(s, "junction_xds_responses_total", type="Cluster", transport="delta") == 1


def test_hostile_node_ids_cannot_explode_the_node_label() -> None:
    registry, metrics, _ = xds()
    for i in range(1000):
        metrics.observe(
            f"rogue-{i}", ADS, i, [Ack(CLUSTER, "v1", "x"), StaleNonce(CLUSTER, "o", "x")]
        )
    s = scrape(registry)
    nodes = {dict(labels)["node"] for (name, labels) in s if name == "junction_xds_acks_total"}
    assert nodes == {"rogue-0", "rogue-1", "rogue-2", "rogue-3", OTHER}
    assert value(s, "junction_xds_acks_total", type="Cluster", node=OTHER) == 996
    assert value(s, "junction_xds_stale_nonces_total", type="Cluster") == 1000


def test_bounded_label_keeps_the_first_values_for_good() -> None:
    label = BoundedLabel(2)
    assert [label(v) for v in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]


def test_config_and_source_families_come_from_the_publisher_status() -> None:
    status = {
        "config": {
            "accepted": {"consul:junction/config": 3},
            "rejected": {"consul:junction/config": 2},
        },
        "snapshot": {"resources": {"Cluster": 3, "Listener": 1}, "publishes": 5},
        "sources": {"consul:junction/config": {"ok": False, "errors": 4}},
        "instances": {"web": {"by_health": {"HEALTHY": 2, "DRAINING": 1}}},
    }
    registry, _, _ = xds(status)
    s = scrape(registry)
    assert value(s, "junction_config_accepted_total", origin="consul:junction/config") == 3
    assert value(s, "junction_config_rejected_total", origin="consul:junction/config") == 2
    assert value(s, "junction_source_up", origin="consul:junction/config") == 0
    assert value(s, "junction_source_errors_total", origin="consul:junction/config") == 4
    assert value(s, "junction_xds_snapshot_resources", type="Cluster") == 3
    assert value(s, "junction_xds_publishes_total") == 5
    assert value(s, "junction_catalog_instances", service="web", health="DRAINING") == 1
    assert value(s, "junction_xds_connected_nodes") == 0


def test_every_decision_counter_is_exported_once() -> None:
    """A counter added to the decision service must be given a family here."""
    assert set(FAMILIES) | {"requests", "grpc_streams"} == set(COUNTER_NAMES)
    counts = {name: i + 1 for i, name in enumerate(COUNTER_NAMES)}
    registry = CollectorRegistry()
    workers = [{"alive": True, "restarts": 1}, {"alive": False, "restarts": 2}]
    ExtprocMetrics(registry, lambda: {"counters": counts, "workers": workers, "ready": True})
    s = scrape(registry)
    label_of = {"decisions": "kind", "pins_refused": "reason", "malformed": "what", "keys": "kind"}
    for counter_name, (family, label) in FAMILIES.items():
        sample = value(s, f"junction_extproc_{family}_total", **{label_of[family]: label})
        assert sample == counts[counter_name], counter_name
    assert value(s, "junction_extproc_requests_total") == counts["requests"]
    assert value(s, "junction_extproc_workers") == 1
    assert value(s, "junction_extproc_worker_restarts_total") == 3


def test_access_log_families_follow_the_receiver_counters() -> None:
    registry = CollectorRegistry()
    status = {
        "receiver": {
            "entries": 10, "processed_entries": 8, "dropped_entries": 2, "queued_bytes": 512,
            "rejected_oversized": 1, "rejected_malformed": 3, "late_entries": 4,
            "sinks": {"written": 8, "dropped": 5},
        },
        "envoy": {"logs_dropped_seen": 6, "logs_written": 20},
    }  # fmt: skip
    requests = {("web-go", "split", False): 7, ("web-go", "pin", True): 2}  # DecisionCounts.by_cluster
    AlsMetrics(registry, lambda: status, lambda: requests)
    s = scrape(registry)
    assert value(s, "junction_als_entries_received_total") == 10
    assert value(s, "junction_als_entries_processed_total") == 8
    assert value(s, "junction_als_entries_dropped_total", reason="queue") == 2
    assert value(s, "junction_als_entries_dropped_total", reason="sink") == 5
    assert value(s, "junction_als_messages_rejected_total", reason="malformed") == 3
    assert value(s, "junction_als_queue_bytes") == 512
    assert value(s, "junction_als_late_entries_total") == 4
    assert value(s, "junction_envoy_access_logs_dropped_total") == 6
    assert (
        value(s, "junction_als_requests_total", cluster="web-go", decision="split", outcome="ok")
        == 7
    )
    assert (
        value(s, "junction_als_requests_total", cluster="web-go", decision="pin", outcome="failed")
        == 2
    )


def test_canary_families_show_weight_phase_evidence_and_decisions() -> None:
    event = CanaryEvent(
        at=5.0, service="web-api", action="promote", from_weight=5, to_weight=10, reason="ok",
        evidence={"candidate": {"requests": 120, "failures": 1, "cluster": "web-api-go"},
                  "missing": 0},
    )  # fmt: skip
    state = CanaryState(
        service="web-api", version="go", baseline="web-api-perl", candidate="web-api-go",
        weight=10, phase=Phase.RAMPING, step_started=5.0, updated=5.0, reason="ok",
        events=(event,),
    )  # fmt: skip
    registry = CollectorRegistry()
    CanaryMetrics(
        registry,
        states=lambda: {"web-api": state},
        decisions=lambda: {("web-api", "promote"): 2, ("web-api", "start"): 1},
    )
    s = scrape(registry)
    assert value(s, "junction_canary_weight", service="web-api", version="go") == 10
    assert value(s, "junction_canary_phase", service="web-api", phase="ramping") == 1
    assert value(s, "junction_canary_phase", service="web-api", phase="rolled_back") == 0
    assert (
        value(s, "junction_canary_evidence", service="web-api", side="candidate", figure="requests")
        == 120
    )
    assert value(s, "junction_canary_evidence", service="web-api", side="", figure="missing") == 0
    assert value(s, "junction_canary_decisions_total", service="web-api", action="promote") == 2


def test_answer_times_sum_over_workers_in_prometheus_buckets() -> None:
    """Two workers' histograms through shared memory, summed as the supervisor does."""
    shared = SharedCounters(2)
    for worker, observations in enumerate(([4e-6, 1e-5, 3e-5], [1e-5, 0.5])):
        times = AnswerTimes()
        for seconds in observations:
            times.observe(seconds)
        shared.publish(worker, COUNTERS_NONE, times)
    out = answer_json(shared.total())
    assert ANSWER_BUCKETS[:3] == (5e-6, 1e-5, 2e-5)
    # A value equal to a bound counts in that bucket ("le"); counts are cumulative.
    assert out["buckets"]["5e-06"] == 1
    assert out["buckets"]["1e-05"] == 3
    assert out["buckets"]["2e-05"] == 3
    assert out["buckets"]["5e-05"] == 4
    assert out["buckets"]["0.1"] == 4
    assert out["buckets"]["+Inf"] == out["count"] == 5
    assert out["sum"] == pytest.approx(0.500054, abs=1e-8)
    registry = CollectorRegistry()
    ExtprocMetrics(registry, lambda: {"counters": {}, "answer_seconds": out})
    s = scrape(registry)
    assert value(s, "junction_extproc_answer_seconds_bucket", le="1e-05") == 3
    assert value(s, "junction_extproc_answer_seconds_count") == 5


def test_the_dashboard_only_queries_metrics_that_exist() -> None:
    """Every ``junction_*`` series in deploy/grafana/junction.json is exported by a collector
    (a renamed metric must not leave an empty panel behind)."""
    import json
    import re
    from pathlib import Path
    from types import SimpleNamespace

    registry = CollectorRegistry()
    status = {"snapshot": {"resources": {"Cluster": 1}}, "config": {"rejected": {"f": 1}}}
    node = SimpleNamespace(node_id="n", connected=True, synced=True)
    metrics = XdsMetrics(registry, status=lambda: status, nodes=lambda: [node])
    metrics.observe("n", ADS, 1, [Connected("n", ADS), sent(CLUSTER, "a"), nack(CLUSTER, "a")])
    metrics.observe_publish(PublishTiming(0.01, 0.01, 0.0, None))
    AlsMetrics(registry, lambda: {}, lambda: {("c", "split", False): 1})
    state = CanaryState(
        service="s", version="v", baseline="b", candidate="c", weight=1, phase=Phase.RAMPING,
        step_started=0.0, updated=0.0, reason="",
        events=(CanaryEvent(0.0, "s", "start", 0, 1, "", evidence={"candidate": {"requests": 1}}),),
    )  # fmt: skip
    CanaryMetrics(registry, states=lambda: {"s": state}, decisions=lambda: {("s", "start"): 1})
    times = AnswerTimes()
    times.observe(1e-5)
    row = dict.fromkeys(COUNTER_NAMES, 1) | dict(zip(
        [f"answer_bucket_{i}" for i in range(len(ANSWER_BUCKETS) + 1)] + ["answer_ns"],
        times.columns(), strict=True,
    ))  # fmt: skip
    ExtprocMetrics(
        registry,
        lambda: {"counters": dict.fromkeys(COUNTER_NAMES, 1), "answer_seconds": answer_json(row)},
    )
    exported = {name for name, _ in scrape(registry)}
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "junction.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bjunction_[a-z0-9_]+", e)}
    assert len(used) >= 12
    assert used - exported == set()


def test_one_answer_in_every_is_timed() -> None:
    from junction.extproc.http_adapter import HttpProcessor

    times = AnswerTimes(every=4)
    processor = HttpProcessor(Counters(), times=times)  # no table: answers 503 at once
    for _ in range(9):
        processor.respond(b"{}")
    assert sum(times.counts) == 3  # the 1st, 5th and 9th
    assert times.total > 0


def test_the_metrics_cost_benchmark_runs_and_writes_its_section(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "bench.md"
    out.write_text("# B\n\n<!-- metrics-cost:start -->\nold\n<!-- metrics-cost:end -->\n")
    subprocess.run(
        [sys.executable, str(root / "loadtest/extproc/metrics_cost.py"),
         "--rounds", "1", "--calls", "200", "--out", str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    text = out.read_text()
    assert "old" not in text
    assert "| pin (x-junction-version) |" in text and "| canary bucket (x-user-id) |" in text
