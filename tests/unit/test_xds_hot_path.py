"""What the hot-path shortcuts of a one-instance change must not change (loadtest/xds_bench.py
measures their speed; these tests only pin that the answers stay the same)."""

from __future__ import annotations

from dataclasses import replace

from junction.catalog.model import Catalog, Instance
from junction.config.load import load_config
from junction.xds.incremental import IncrementalTranslator
from junction.xds.resources import CLUSTER, ENDPOINT, ROUTE, Snapshot
from junction.xds.validate import check_snapshot

CONFIG = """
listener:
  listen: {address: 127.0.0.1, port: 8000}
route:
  domain: ["example.com"]
  cluster:
    a: {prefix: ["/a"]}
    b: {prefix: ["/b"]}
"""


def _catalog(b_address: str = "10.0.0.2") -> Catalog:
    return Catalog({"a": (Instance("10.0.0.1", 80),), "b": (Instance(b_address, 80),)})


def test_check_snapshot_sees_a_problem_in_the_one_resource_that_changed() -> None:
    config = load_config(CONFIG, "test")
    translator = IncrementalTranslator()
    good = translator.translate(config, _catalog())
    assert check_snapshot(good) == []
    bad = translator.translate(config, _catalog("db.internal"))
    # Only b's assignment is a new object; a's are reused and were checked before.
    assert bad.of_type(ENDPOINT)["a"] is good.of_type(ENDPOINT)["a"]
    assert check_snapshot(bad) == [
        "ClusterLoadAssignment 'b': endpoint address 'db.internal' is not an IP"
    ]
    assert check_snapshot(translator.translate(config, _catalog())) == []


def test_check_snapshot_rechecks_another_object_with_the_same_name_and_version() -> None:
    config = load_config(CONFIG, "test")
    good = IncrementalTranslator().translate(config, _catalog())
    assert check_snapshot(good) == []
    res = good.of_type(CLUSTER)["a"]
    other = type(res.message)()
    other.CopyFrom(res.message)
    other.name = "not-a"
    forged = replace(res, message=other)  # same key, payload and version; another message
    clusters = {"a": forged, "b": good.of_type(CLUSTER)["b"]}
    bad = Snapshot({t: dict(good.of_type(t)) for t in good.resources} | {CLUSTER: clusters})
    problems = check_snapshot(bad)
    assert "Cluster 'a': the message is named 'not-a'" in problems
    assert "Cluster 'a': payload and message differ" in problems


def test_check_snapshot_rechecks_a_remembered_route_table_against_new_clusters() -> None:
    config = load_config(CONFIG, "test")
    good = IncrementalTranslator().translate(config, _catalog())
    assert check_snapshot(good) == []
    # The same RouteConfiguration object (already checked), but cluster b is gone.
    without_b = Snapshot(
        {t: {n: r for n, r in good.of_type(t).items() if n != "b"} for t in good.resources}
    )
    assert without_b.of_type(ROUTE) == good.of_type(ROUTE)
    problems = check_snapshot(without_b)
    assert len(problems) == 1
    assert "route '/b': cluster 'b' is not in CDS" in problems[0]
